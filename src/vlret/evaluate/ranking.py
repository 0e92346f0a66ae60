"""Chunked ranking: recall ranks and top-k over a score matrix that is never held whole.

Scores arrive as row blocks of a (texts x gallery) matrix, from a precomputed array or from any scorer
(a dot product, or a similarity head that is not one). Only one block lives in memory at a time, and blocks
keep the precision they were computed in (a float64 matrix is ranked in float64).

**The tie rule** (the same on every path: score files, embeddings, VISA's base ranking, the trainer's
validation): the rank of a query is the number of *wrong* gallery entries whose score is greater than or
equal to the correct entry's score, comparing the values of one scoring pass exactly. An exact tie counts
against the model, so a constant scorer gets no hits; a wrong score that is lower by any amount, even one
ulp, never counts. For image->text the correct score of an item is the best score among its texts, read
from the same blocks: never from a second computation that could differ in the last bits.

**Item->text ranks** follow one of two rules, which differ only when an item has several texts:
``"captions"`` (VSE++, SCAN and the image-text field) counts every wrong text at or above the item's best own
text; ``"items"`` (CLIP4Clip's multi-sentence video->text, e.g. MSVD) ranks one entry per other item, the
best of its texts, so a video is not pushed down by the many captions of one near-duplicate. Example:
scores ``[[.5, .1], [.4, .2], [.9, .95], [.8, .7]]`` (texts x items), texts of items ``[0, 0, 1, 1]``: by
captions the ranks are ``[2, 0]``, by items ``[1, 0]``. ``"items"`` keeps an ``[items, items]`` matrix.

**Other tie rules** (``ties`` of :func:`rank_blocks`, one per direction; ``pessimistic`` is the rule
above): ``optimistic`` counts only wrong entries strictly above; ``last-first`` ranks tied entries with the
higher index first, as SCAN's ``np.argsort(...)[::-1]`` does; ``first-first`` ranks them with the lower
index first (CLIP4Clip's multi-sentence text->video argsort); ``entries`` is CLIP4Clip's
``compute_metrics``, which keeps one entry per tied position: the rank is the count strictly above and
:attr:`Ranks` records how many wrong entries tie, so that the metrics count ``ties + 1`` entries, at ranks
``rank .. rank + ties``. Example (text->item, one text per item) ``[[.5, .5, .1], [.2, .9, .3], [.1, .2,
.8]]``: pessimistic ranks ``[1, 0, 0]`` (R@1 2/3), optimistic ``[0, 0, 0]``, entries ``[0, 1, 0, 0]``
(R@1 3/4, mean rank 1.25).

**Non-finite scores** (NaN, +-inf) are refused with :class:`~vlret.errors.NonFiniteScoreError`, which
names the row and column of the first one; a NaN compared with anything is false, and would otherwise
turn into a hit.

**Top-k** is a stable selection: best first, ties (also at the k-th place) go to the lower index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vlret.evaluate.block_counts import BlockCounts, ColumnThreshold, check_finite, count_block

ITEM_RANK_RULES = ("captions", "items")
#: how a wrong entry that ties with the right one is ranked, per direction (see the module docstring)
TIE_RULES = ("pessimistic", "optimistic", "last-first", "first-first", "entries")
PESSIMISTIC = ("pessimistic", "pessimistic")
BlockFn = Callable[[int, int], torch.Tensor]  # (row_start, row_stop) -> scores [stop - start, n_gallery]
DEFAULT_CHUNK = 512  # rows per block of a scorer or a stored matrix
# Rows per block of a dot product, at most: the matrix product packs the gallery once per call, so taller
# blocks cost less per row (25,000 x 5,000 x 512: 2.05 s in blocks of 512 rows, 1.96 s in blocks of 2,048)
_MAX_DOT_CHUNK = 4096
_DOT_BLOCK_BYTES = 1 << 26  # 64 MB: a block of up to this size (2,048 rows of 5,000 float32 scores)
# Half-width, in units of the scores' precision, of the band around an estimated threshold inside which
# image->text entries are kept and compared exactly once the true threshold is known (see _ItemCounter).
_BAND_ULPS = 256
_MAX_BAND_ENTRIES = 4_000_000


@dataclass
class Ranks:
    """0-based ranks of the correct answer for each text->item and each item->text query."""

    t2i: np.ndarray  # [n_texts]
    i2t: np.ndarray  # [n_items]
    # under the ``entries`` tie rule: how many wrong entries tie with each query's right one (its metrics
    # count one entry per tied position, CLIP4Clip's compute_metrics); None under the other rules
    t2i_ties: np.ndarray | None = None
    i2t_ties: np.ndarray | None = None


def iter_blocks(
    block_fn: BlockFn, n_rows: int, chunk: int = DEFAULT_CHUNK, check: bool = True
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, block)`` for consecutive row blocks; every block is checked for non-finite values, unless
    ``check`` is False because the caller's :func:`count_block` checks each block in its own pass."""
    for start in range(0, n_rows, chunk):
        block = block_fn(start, min(start + chunk, n_rows))
        if check:
            check_finite(block, start)
        yield start, block


def ranking_dtype(dtype: np.dtype) -> np.dtype:
    """The precision a score array is ranked in: float64 and integers in float64, other floats in float32."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 or dtype.kind in "iub":
        return np.dtype(np.float64)
    return np.dtype(np.float32)


class _ItemCounter:
    """Image->text counts in one pass over the row blocks, exact although each item's threshold (the best
    score among its own texts) is only known once every block has been seen.

    With an estimate of each text's correct score (``hint``, e.g. the pairwise dot products), entries clearly
    above the estimated threshold are counted as they stream by, and the few inside a narrow band around it
    are kept with their values. At the end, when the exact thresholds are known, the band entries are
    compared exactly. If an exact threshold falls outside its band (the estimate was too far off), or the
    band holds too many entries (a degenerate scorer), or there is no estimate, :meth:`finish` returns None
    and the caller counts in a second pass.
    """

    def __init__(self, text_item: torch.Tensor, n_items: int, hint: torch.Tensor | None):
        self.text_item, self.n_items = text_item, n_items
        self.active = hint is not None
        if not self.active:
            return
        hint = hint.detach()
        estimate = torch.full((n_items,), -torch.inf, dtype=hint.dtype)
        estimate = estimate.scatter_reduce(0, text_item, hint, reduce="amax")
        known = estimate[torch.isfinite(estimate)]
        scale = float(known.abs().max()) if len(known) else 1.0
        band = _BAND_ULPS * float(torch.finfo(hint.dtype).eps) * max(scale, 1e-30)
        self.low, self.high = estimate - band, estimate + band
        self.counts = torch.zeros(n_items, dtype=torch.int64)
        self.band_items: list[torch.Tensor] = []
        self.band_values: list[torch.Tensor] = []
        self.band_size = 0

    def thresholds(self) -> list[ColumnThreshold]:
        """What :meth:`add` needs counted in each block: the entries above the band, and those at or
        above its lower edge."""
        if not self.active:
            return []
        return [ColumnThreshold(self.high, strict=True), ColumnThreshold(self.low, strict=False)]

    def add(self, own_item: torch.Tensor, counts: BlockCounts) -> None:
        """Take in one block, counted with :meth:`thresholds` and the entries between them (``between``)."""
        if not self.active:
            return
        self.counts += counts.columns[0]
        self.counts.index_add_(0, own_item, -torch.from_numpy(counts.own[0].astype(np.int64)))  # not wrong
        rows, columns, values = counts.between
        wrong = own_item.numpy()[rows] != columns
        self.band_items.append(torch.from_numpy(columns[wrong].astype(np.int64)))
        self.band_values.append(torch.from_numpy(values[wrong]))
        self.band_size += int(wrong.sum())
        if self.band_size > _MAX_BAND_ENTRIES:
            self.active = False  # give up: a second pass is cheaper than this much bookkeeping

    def finish(self, best: torch.Tensor, has_texts: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        low, high = self.low.to(best.dtype), self.high.to(best.dtype)
        if bool((has_texts & ((best < low) | (best > high))).any()):
            return None
        counts = self.counts.clone()
        if self.band_items:
            items, values = torch.cat(self.band_items), torch.cat(self.band_values)
            counts.index_add_(0, items, (values >= best[items]).long())
        return counts


def _count_item_ranks(
    block_fn: BlockFn, text_item: torch.Tensor, best: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Image->text counts against known thresholds ``best``: one more pass over the blocks."""
    counts = torch.zeros(len(best), dtype=torch.int64)
    threshold = [ColumnThreshold(best, strict=False)]
    for start, block in iter_blocks(block_fn, len(text_item), chunk, check=False):
        own_item = text_item[start : start + block.shape[0]]
        found = count_block(block, None, threshold, own_item.numpy(), row_offset=start)
        counts += found.columns[0]
        counts.index_add_(0, own_item, -torch.from_numpy(found.own[0].astype(np.int64)))  # own: not wrong
    return counts


def rank_blocks(
    block_fn: BlockFn,
    text_to_item: np.ndarray,
    n_items: int,
    chunk: int = DEFAULT_CHUNK,
    positive_hint: torch.Tensor | None = None,
    item_rule: str = "captions",
    ties: tuple[str, str] = PESSIMISTIC,
) -> Ranks:
    """Ranks in both directions from row blocks of the (texts x items) score matrix, by the tie rule of each
    direction (``ties``: text->item, item->text; see the module docstring) and the item->text ``item_rule``
    (``"captions"`` or ``"items"``).

    ``positive_hint[t]`` (optional) estimates the score of text ``t`` with its own item; it only saves a
    second pass over the blocks for the image->text direction and never changes a rank. ``block_fn`` must be
    deterministic. An item without texts gets rank ``n_texts`` (it can never be a hit).
    """
    if item_rule not in ITEM_RANK_RULES:
        raise ValueError(f"item_rule must be one of {ITEM_RANK_RULES}, not {item_rule!r}")
    if any(rule not in TIE_RULES for rule in ties):
        raise ValueError(f"tie rules must be among {TIE_RULES}, not {ties!r}")
    if tuple(ties) != PESSIMISTIC:
        return _rank_with_ties(block_fn, text_to_item, n_items, chunk, item_rule, tuple(ties))
    if item_rule == "items":
        return _rank_by_items(block_fn, text_to_item, n_items, chunk)
    text_item = torch.as_tensor(np.asarray(text_to_item), dtype=torch.long)
    n_texts = len(text_item)
    has_texts = torch.zeros(n_items, dtype=torch.bool)
    has_texts[text_item] = True
    t2i_ranks = torch.empty(n_texts, dtype=torch.int64)
    own_scores: torch.Tensor | None = None
    item_counter = _ItemCounter(text_item, n_items, positive_hint)
    for start, block in iter_blocks(block_fn, n_texts, chunk, check=False):  # count_block checks
        rows = torch.arange(block.shape[0])
        own_item = text_item[start : start + len(rows)]
        own = block[rows, own_item]
        if own_scores is None:
            own_scores = torch.empty(n_texts, dtype=block.dtype)
        own_scores[start : start + len(rows)] = own
        # text -> item: entries at or above the correct one, which counts itself (hence -1).
        between = (0, 1) if item_counter.active else None  # the entries inside the band
        thresholds = item_counter.thresholds()
        counts = count_block(block, own, thresholds, own_item.numpy(), between, row_offset=start)
        t2i_ranks[start : start + len(rows)] = counts.rows - 1
        item_counter.add(own_item, counts)
    if own_scores is None:
        return Ranks(t2i_ranks.numpy(), np.full(n_items, n_texts, dtype=np.int64))
    best = torch.full((n_items,), -torch.inf, dtype=own_scores.dtype)
    best = best.scatter_reduce(0, text_item, own_scores, reduce="amax")
    counts = item_counter.finish(best, has_texts)
    if counts is None:
        counts = _count_item_ranks(block_fn, text_item, best, chunk)
    counts[~has_texts] = n_texts
    return Ranks(t2i_ranks.numpy(), counts.numpy())


def _rank_by_items(block_fn: BlockFn, text_to_item: np.ndarray, n_items: int, chunk: int) -> Ranks:
    """:func:`rank_blocks` with item->text ranks by items: one pass keeps, for every (owner item, item)
    pair, the best score of the owner's texts; an item's rank is the number of other owners whose best
    is at or above its own (the tie rule above)."""
    text_item = torch.as_tensor(np.asarray(text_to_item), dtype=torch.long)
    n_texts = len(text_item)
    t2i_ranks = torch.empty(n_texts, dtype=torch.int64)
    best_of_owner: torch.Tensor | None = None  # [owner items, items]
    for start, block in iter_blocks(block_fn, n_texts, chunk):
        rows = torch.arange(block.shape[0])
        own_item = text_item[start : start + len(rows)]
        own = block[rows, own_item]
        t2i_ranks[start : start + len(rows)] = (block >= own[:, None]).sum(1, dtype=torch.int32) - 1
        if best_of_owner is None:
            best_of_owner = torch.full((n_items, n_items), -torch.inf, dtype=block.dtype)
        owners = own_item[:, None].expand_as(block)
        best_of_owner.scatter_reduce_(0, owners, block, reduce="amax")
    if best_of_owner is None:
        return Ranks(t2i_ranks.numpy(), np.full(n_items, n_texts, dtype=np.int64))
    own_best = best_of_owner.diagonal()
    counts = (best_of_owner >= own_best[None, :]).sum(0) - 1  # the item's own row counts itself
    has_texts = torch.zeros(n_items, dtype=torch.bool)
    has_texts[text_item] = True
    counts[~has_texts] = n_texts
    return Ranks(t2i_ranks.numpy(), counts.numpy())


def _by_rule(
    rule: str, greater: torch.Tensor, before: torch.Tensor, after: torch.Tensor, tied: torch.Tensor
) -> torch.Tensor:
    """A rank from the wrong entries strictly above the right one, those tied with it (``tied``), and of
    those the ones placed before it by a lower (``before``) or a higher (``after``) index."""
    if rule == "pessimistic":
        return greater + tied
    if rule == "last-first":
        return greater + after
    if rule == "first-first":
        return greater + before
    return greater  # optimistic; entries (its tied positions are counted by the metrics)


def _rank_with_ties(
    block_fn: BlockFn,
    text_to_item: np.ndarray,
    n_items: int,
    chunk: int,
    item_rule: str,
    ties: tuple[str, str],
) -> Ranks:
    """:func:`rank_blocks` under other tie rules: each query's wrong entries strictly above its right one
    and those tied with it before and after its index, counted apart (plain passes: these rules are for
    comparing with a paper's table, not the everyday path)."""
    text_item = torch.as_tensor(np.asarray(text_to_item), dtype=torch.long)
    n_texts = len(text_item)
    t2i = torch.empty(n_texts, dtype=torch.int64)
    t2i_tied = torch.empty(n_texts, dtype=torch.int64)
    own_scores: torch.Tensor | None = None
    best_of_owner: torch.Tensor | None = None
    columns = torch.arange(n_items)
    for start, block in iter_blocks(block_fn, n_texts, chunk):
        rows = torch.arange(block.shape[0])
        own_item = text_item[start : start + len(rows)]
        own = block[rows, own_item]
        equal = block == own[:, None]
        equal[rows, own_item] = False  # the right entry is not a tie with itself
        before = (equal & (columns[None, :] < own_item[:, None])).sum(1)
        after = equal.sum(1) - before
        greater = (block > own[:, None]).sum(1)
        t2i[start : start + len(rows)] = _by_rule(ties[0], greater, before, after, before + after)
        t2i_tied[start : start + len(rows)] = before + after
        if own_scores is None:
            own_scores = torch.empty(n_texts, dtype=block.dtype)
        own_scores[start : start + len(rows)] = own
        if item_rule == "items":
            if best_of_owner is None:
                best_of_owner = torch.full((n_items, n_items), -torch.inf, dtype=block.dtype)
            best_of_owner.scatter_reduce_(0, own_item[:, None].expand_as(block), block, reduce="amax")
    has_texts = torch.zeros(n_items, dtype=torch.bool)
    has_texts[text_item] = True
    if own_scores is None:
        return Ranks(t2i.numpy(), np.full(n_items, n_texts, dtype=np.int64))
    if item_rule == "items":
        greater, before, after, i2t_tied = _owner_counts(best_of_owner)
    else:
        greater, before, after, i2t_tied = _caption_counts(block_fn, text_item, own_scores, n_items, chunk)
    i2t = _by_rule(ties[1], greater, before, after, i2t_tied)
    i2t[~has_texts] = n_texts
    i2t_tied[~has_texts] = 0
    return Ranks(
        t2i.numpy(),
        i2t.numpy(),
        t2i_tied.numpy() if ties[0] == "entries" else None,
        i2t_tied.numpy() if ties[1] == "entries" else None,
    )


def _owner_counts(best_of_owner: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Item->text by items: for each item, the other owners whose best text scores above its own best,
    and those tying with it at a lower or a higher owner index."""
    n = len(best_of_owner)
    own_best = best_of_owner.diagonal()
    greater = (best_of_owner > own_best[None, :]).sum(0)
    equal = best_of_owner == own_best[None, :]
    equal.fill_diagonal_(False)
    owner, item = torch.arange(n)[:, None], torch.arange(n)[None, :]
    before, tied = (equal & (owner < item)).sum(0), equal.sum(0)
    return greater, before, tied - before, tied


def _caption_counts(
    block_fn: BlockFn, text_item: torch.Tensor, own_scores: torch.Tensor, n_items: int, chunk: int
) -> tuple[torch.Tensor, ...]:
    """Item->text by captions: for each item, the wrong texts above its best own text, those tying with
    it before its first own text at that score (lower index), after its last (higher index), and in all."""
    n_texts = len(text_item)
    best = torch.full((n_items,), -torch.inf, dtype=own_scores.dtype)
    best = best.scatter_reduce(0, text_item, own_scores, reduce="amax")
    at_best = own_scores == best[text_item]
    index = torch.arange(n_texts)
    first = torch.full((n_items,), n_texts, dtype=torch.int64).scatter_reduce(
        0, text_item[at_best], index[at_best], reduce="amin"
    )
    last = torch.full((n_items,), -1, dtype=torch.int64).scatter_reduce(
        0, text_item[at_best], index[at_best], reduce="amax"
    )
    greater = torch.zeros(n_items, dtype=torch.int64)
    before = torch.zeros(n_items, dtype=torch.int64)
    after = torch.zeros(n_items, dtype=torch.int64)
    total = torch.zeros(n_items, dtype=torch.int64)
    for start, block in iter_blocks(block_fn, n_texts, chunk):
        rows = start + torch.arange(block.shape[0])
        wrong = text_item[rows][:, None] != torch.arange(n_items)[None, :]
        threshold = best.to(block.dtype)[None, :]
        greater += ((block > threshold) & wrong).sum(0)
        tied = (block == threshold) & wrong
        before += (tied & (rows[:, None] < first[None, :])).sum(0)
        after += (tied & (rows[:, None] > last[None, :])).sum(0)
        total += tied.sum(0)
    return greater, before, after, total


def stable_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (values, indices) of each row, best first; ties go to the lower index, also at the k-th place."""
    n = block.shape[1]
    k = min(k, n)
    if k == 0:
        empty = torch.empty((block.shape[0], 0), dtype=torch.long)
        return block[:, :0], empty
    values, indices = torch.topk(block, min(k + 1, n), dim=1)
    # The top-k set is unique unless the k-th and (k+1)-th values are equal; those rows are sorted whole.
    ambiguous = (values[:, k] == values[:, k - 1]).nonzero().flatten() if k < n else None
    indices = indices[:, :k].sort(dim=1).values  # index order, so the stable sort below breaks ties by index
    values = block.gather(1, indices)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    values, indices = values.gather(1, order), indices.gather(1, order)
    if ambiguous is not None and len(ambiguous):
        exact = torch.sort(block[ambiguous], dim=1, descending=True, stable=True)
        values[ambiguous], indices[ambiguous] = exact.values[:, :k], exact.indices[:, :k]
    return values, indices


def topk_blocks(
    block_fn: BlockFn, n_rows: int, k: int, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, gallery indices) per row, best first; ties go to the lower index."""
    values, indices = [], []
    for _, block in iter_blocks(block_fn, n_rows, chunk):
        v, i = stable_topk(block, k)
        values.append(v)
        indices.append(i)
    return torch.cat(values).numpy(), torch.cat(indices).numpy()


def matrix_block_fn(scores: np.ndarray | torch.Tensor) -> BlockFn:
    """Row blocks of a precomputed matrix in its own precision (a numpy memmap stays on disk until read)."""
    if isinstance(scores, torch.Tensor):
        return lambda start, stop: scores[start:stop]
    dtype = ranking_dtype(scores.dtype)

    def block(start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(np.array(scores[start:stop], dtype=dtype))

    return block


def dot_block_fn(queries: torch.Tensor, gallery: torch.Tensor, reuse: bool = False) -> BlockFn:
    """Row blocks of ``queries @ gallery.T`` (cosine scores when both are L2-normalised).

    ``reuse``: every block is written into one buffer, which the next call overwrites (for a caller that
    is done with a block before it asks for the next, as the rankers here are): a fresh 10 MB block costs
    its page faults, a quarter of the matmul's time on this machine."""
    gallery_t = gallery.T.contiguous()
    buffer: list[torch.Tensor] = []

    def block(start: int, stop: int) -> torch.Tensor:
        rows = queries[start:stop]
        if not reuse or rows.device.type != "cpu" or rows.requires_grad:
            return rows @ gallery_t
        if not buffer or buffer[0].shape[0] < len(rows):
            buffer[:] = [
                torch.empty((len(rows), gallery_t.shape[1]), dtype=torch.result_type(rows, gallery_t))
            ]
        return torch.matmul(rows, gallery_t, out=buffer[0][: len(rows)])

    return block


def dot_chunk(n_gallery: int, itemsize: int = 4) -> int:
    """Rows per block of a dot-product ranking: the tallest power of two from :data:`DEFAULT_CHUNK` to
    4,096 whose block of ``n_gallery`` scores per row stays within 64 MB (never below DEFAULT_CHUNK)."""
    rows = DEFAULT_CHUNK
    while rows < _MAX_DOT_CHUNK and 2 * rows * n_gallery * itemsize <= _DOT_BLOCK_BYTES:
        rows *= 2
    return rows


def pairwise_dot(
    queries: torch.Tensor, gallery: torch.Tensor, query_to_item: np.ndarray, chunk: int = 1024
) -> torch.Tensor:
    """``queries[t] . gallery[query_to_item[t]]``: the estimate of each correct score :func:`rank_blocks` takes.

    Computed ``chunk`` queries at a time, so that the gathered gallery rows stay in cache (three times
    faster than gathering all 25,000 at once here)."""
    index = torch.as_tensor(np.asarray(query_to_item), dtype=torch.long)
    if len(index) == 0:
        return queries.new_empty(0)
    parts = [
        torch.linalg.vecdot(queries[start : start + chunk], gallery[index[start : start + chunk]])
        for start in range(0, len(index), chunk)
    ]
    return torch.cat(parts)


def rank_matrix(
    scores: np.ndarray | torch.Tensor, text_to_item: np.ndarray, chunk: int = DEFAULT_CHUNK
) -> Ranks:
    """Ranks from a full (texts x items) matrix; the correct scores are read from the matrix itself."""
    rows = np.arange(len(text_to_item))
    block_fn = matrix_block_fn(scores)
    if isinstance(scores, torch.Tensor):
        hint = scores[torch.from_numpy(rows), torch.as_tensor(text_to_item)]
    else:
        hint = torch.from_numpy(np.asarray(scores[rows, text_to_item], dtype=ranking_dtype(scores.dtype)))
    return rank_blocks(block_fn, text_to_item, scores.shape[1], chunk, positive_hint=hint)


def rank_embeddings(
    text_embeds: torch.Tensor,
    item_embeds: torch.Tensor,
    text_to_item: np.ndarray,
    chunk: int | None = None,
) -> Ranks:
    """Ranks under the dot product of (already normalised) embeddings, without forming the whole matrix,
    in blocks of ``chunk`` rows (default: :func:`dot_chunk`)."""
    hint = pairwise_dot(text_embeds, item_embeds, text_to_item)
    itemsize = torch.empty(0, dtype=torch.result_type(text_embeds, item_embeds)).element_size()
    return rank_blocks(
        dot_block_fn(text_embeds, item_embeds, reuse=True),
        text_to_item,
        len(item_embeds),
        chunk or dot_chunk(len(item_embeds), itemsize),
        positive_hint=hint,
    )
