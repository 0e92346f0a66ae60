"""Chunked ranking: recall ranks and top-k over a score matrix that is never held whole.

Scores arrive as row blocks of a (texts x gallery) matrix, from a precomputed array or from any scorer
(a dot product, or a similarity head that is not one). Only one block lives in memory at a time.

Rank convention: the rank of a query is the number of *wrong* gallery entries that score at least as high as
the best correct one (0 = hit at R@1). Ties count against the model, so a constant scorer gets rank n-1, not
0. Entries within ``tie_tolerance`` of the correct score count as ties: the correct score of an image->text
query comes from a separate pairwise computation, which can differ from the block's value in the last bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

BlockFn = Callable[[int, int], torch.Tensor]  # (row_start, row_stop) -> scores [stop - start, n_gallery]
DEFAULT_CHUNK = 2048
DEFAULT_TIE_TOLERANCE = 1e-6


@dataclass
class Ranks:
    """0-based ranks of the correct answer for each text->item and each item->text query."""

    t2i: np.ndarray  # [n_texts]
    i2t: np.ndarray  # [n_items]


def iter_blocks(
    block_fn: BlockFn, n_rows: int, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, n_rows, chunk):
        yield start, block_fn(start, min(start + chunk, n_rows))


def rank_blocks(
    block_fn: BlockFn,
    text_to_item: np.ndarray,
    positive_scores: torch.Tensor,
    n_items: int,
    chunk: int = DEFAULT_CHUNK,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> Ranks:
    """Ranks in both directions from row blocks of the (texts x items) score matrix.

    ``positive_scores[t]`` is the score of text ``t`` with its own item; an item's best correct score is the
    maximum over its texts. An item without texts gets rank ``n_texts`` (it can never be a hit).
    """
    t2i_item = torch.as_tensor(text_to_item, dtype=torch.long)
    n_texts = len(t2i_item)
    positive_scores = positive_scores.to(torch.float32)
    best = torch.full((n_items,), float("inf"))
    best = best.scatter_reduce(0, t2i_item, positive_scores, reduce="amax", include_self=False)
    best_threshold = best - tie_tolerance
    t2i_ranks = torch.empty(n_texts, dtype=torch.int64)
    i2t_counts = torch.zeros(n_items, dtype=torch.int64)
    for start, block in iter_blocks(block_fn, n_texts, chunk):
        block = block.to(torch.float32)
        rows = torch.arange(block.shape[0])
        own_item = t2i_item[start : start + block.shape[0]]
        own_score = block[rows, own_item]
        # text -> item: wrong items at or above the correct one (the correct one always counts itself: -1).
        t2i_ranks[start : start + len(rows)] = (block >= (own_score - tie_tolerance)[:, None]).sum(
            1, dtype=torch.int32
        ) - 1
        # item -> text: per item, texts at or above its best correct text, minus its own texts among them.
        at_or_above = block >= best_threshold[None, :]
        i2t_counts += at_or_above.sum(0, dtype=torch.int32)
        i2t_counts.index_add_(0, own_item, -at_or_above[rows, own_item].long())
    i2t_counts[torch.isinf(best)] = n_texts
    return Ranks(t2i_ranks.numpy(), i2t_counts.numpy())


def topk_blocks(
    block_fn: BlockFn, n_rows: int, k: int, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, gallery indices) per row, best first; ties broken by lower index."""
    values, indices = [], []
    for _, block in iter_blocks(block_fn, n_rows, chunk):
        k_eff = min(k, block.shape[1])
        v, i = torch.topk(block.to(torch.float32), k_eff, dim=1, sorted=True)
        values.append(v)
        indices.append(i)
    return torch.cat(values).numpy(), torch.cat(indices).numpy()


def matrix_block_fn(scores: np.ndarray | torch.Tensor) -> BlockFn:
    """Row blocks of a precomputed matrix (a numpy memmap stays on disk until a block is read)."""

    def block(start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(np.array(scores[start:stop], dtype=np.float32))

    return block


def dot_block_fn(queries: torch.Tensor, gallery: torch.Tensor) -> BlockFn:
    """Row blocks of ``queries @ gallery.T`` (cosine scores when both are L2-normalised)."""
    gallery_t = gallery.T.contiguous()

    def block(start: int, stop: int) -> torch.Tensor:
        return queries[start:stop] @ gallery_t

    return block


def rank_matrix(
    scores: np.ndarray | torch.Tensor, text_to_item: np.ndarray, chunk: int = DEFAULT_CHUNK
) -> Ranks:
    """Ranks from a full (texts x items) matrix; the correct scores are read from the matrix itself."""
    rows = np.arange(len(text_to_item))
    positive = torch.as_tensor(np.asarray(scores[rows, text_to_item], dtype=np.float32))
    return rank_blocks(matrix_block_fn(scores), text_to_item, positive, scores.shape[1], chunk)


def rank_embeddings(
    text_embeds: torch.Tensor, item_embeds: torch.Tensor, text_to_item: np.ndarray, chunk: int = DEFAULT_CHUNK
) -> Ranks:
    """Ranks under the dot product of (already normalised) embeddings, without forming the whole matrix."""
    positive = (text_embeds * item_embeds[torch.as_tensor(text_to_item)]).sum(1)
    return rank_blocks(
        dot_block_fn(text_embeds, item_embeds), text_to_item, positive, len(item_embeds), chunk
    )
