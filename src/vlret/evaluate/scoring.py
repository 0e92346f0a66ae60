"""Score blocks from a model's similarity head, bounded in memory over both axes.

:func:`head_block_fn` gives :func:`~vlret.evaluate.ranking.rank_blocks` and
:func:`~vlret.evaluate.ranking.topk_blocks` row blocks of the (texts x items) score matrix of any head.
Each row block is assembled from item blocks sized so that the head's intermediate tensors stay under
``budget`` elements (``rows x items x head.pair_cost``), so a token-level head over 5,000 items x 25,000
texts runs in a fixed amount of memory; the feature arrays themselves may be memory-mapped.
"""

from __future__ import annotations

import numpy as np
import torch

from vlret.evaluate.encode import FeatureTable
from vlret.evaluate.ranking import BlockFn
from vlret.models.base import Features
from vlret.models.heads import SimilarityHead

#: elements of intermediate memory a head may use per block (float32: 256 MiB)
DEFAULT_BUDGET = 1 << 26
#: on a CPU, blocks that stay near the caches are faster than large ones (measured: bench/sgraf_eval.py)
CPU_BUDGET = 1 << 22


def block_shape(
    head: SimilarityHead, texts: FeatureTable, items: FeatureTable, rows: int, budget: int | None = None
) -> tuple[int, int]:
    """(texts, items) per scoring call for row blocks of ``rows`` texts: about square in pairs, within
    ``budget`` elements (:data:`CPU_BUDGET` for a head on a CPU, :data:`DEFAULT_BUDGET` elsewhere)."""
    if budget is None:
        on_cpu = next(iter(head.parameters()), torch.empty(0)).device.type == "cpu"
        budget = CPU_BUDGET if on_cpu else DEFAULT_BUDGET
    if len(texts) == 0 or len(items) == 0:
        return max(rows, 1), max(len(items), 1)
    cost = max(head.pair_cost(texts.rows(0, 1), items.rows(0, 1)), 1)
    side = max(1, int((budget / cost) ** 0.5))
    item_chunk = min(len(items), side)
    return max(1, min(rows, budget // (item_chunk * cost))), item_chunk


def head_device(head: SimilarityHead) -> torch.device:
    """Where ``head`` computes: its parameters' device (the CPU for a head without parameters)."""
    return next(iter(head.parameters()), torch.empty(0)).device


@torch.no_grad()
def score_block(
    head: SimilarityHead,
    texts: Features,
    items: FeatureTable,
    item_chunk: int,
    item_start: int = 0,
    item_stop: int | None = None,
    text_chunk: int | None = None,
) -> torch.Tensor:
    """Scores of the text features ``texts`` against items ``item_start:item_stop``, in calls of at most
    ``text_chunk`` texts x ``item_chunk`` items."""
    item_stop = len(items) if item_stop is None else item_stop
    text_chunk = text_chunk or len(texts)
    device = head_device(head)  # features go to the head's device, scores come back to the CPU's rankers
    rows = []
    for t0 in range(0, len(texts), text_chunk):
        part = texts.rows(t0, min(t0 + text_chunk, len(texts))).to(device)
        columns = [
            head.score(part, items.rows(start, min(start + item_chunk, item_stop)).to(device)).cpu()
            for start in range(item_start, item_stop, item_chunk)
        ]
        rows.append(torch.cat(columns, dim=1) if columns else torch.zeros((len(part), 0)))
    return torch.cat(rows) if rows else torch.zeros((0, item_stop - item_start))


def head_block_fn(
    head: SimilarityHead,
    texts: FeatureTable,
    items: FeatureTable,
    rows: int,
    budget: int | None = None,
) -> BlockFn:
    """Row blocks (at most ``rows`` texts) of the head's score matrix, each built from bounded blocks."""
    head.eval()
    text_chunk, item_chunk = block_shape(head, texts, items, rows, budget)

    def block(start: int, stop: int) -> torch.Tensor:
        return score_block(head, texts.rows(start, stop), items, item_chunk, text_chunk=text_chunk)

    return block


@torch.no_grad()
def head_positive_scores(
    head: SimilarityHead, texts: FeatureTable, items: FeatureTable, text_to_item: np.ndarray, chunk: int = 256
) -> torch.Tensor:
    """The head's score of every text with its own item (the estimate :func:`rank_blocks` takes)."""
    head.eval()
    out = []
    for start in range(0, len(texts), chunk):
        stop = min(start + chunk, len(texts))
        own = np.asarray(text_to_item[start:stop])
        item_rows = FeatureTable(
            items.embeds[own],
            None if items.tokens is None else items.tokens[own],
            None if items.mask is None else items.mask[own],
        ).rows(0, len(own))
        device = head_device(head)
        out.append(head.score_pairs(texts.rows(start, stop).to(device), item_rows.to(device)).cpu())
    return torch.cat(out) if out else torch.empty(0)


def fold_table(table: FeatureTable, start: int, stop: int) -> FeatureTable:
    """Rows ``start:stop`` of a table, still as arrays (a view of a memory map stays one)."""
    return FeatureTable(
        table.embeds[start:stop],
        None if table.tokens is None else table.tokens[start:stop],
        None if table.mask is None else table.mask[start:stop],
    )


@torch.no_grad()
def score_candidates(
    head: SimilarityHead,
    texts: FeatureTable,
    items: FeatureTable,
    text_rows: np.ndarray,
    item_rows: np.ndarray,
    budget: int = DEFAULT_BUDGET,
) -> np.ndarray:
    """The head's score of each pair ``(texts[text_rows[q, j]], items[item_rows[q, j]])``: ``[Q, k]``.

    Pairs are scored in chunks whose intermediate tensors stay under ``budget`` elements.
    """
    head.eval()
    shape = text_rows.shape
    text_rows, item_rows = text_rows.reshape(-1), item_rows.reshape(-1)
    if len(text_rows) == 0:
        return np.zeros(shape, np.float32)
    cost = head.pair_cost(texts.rows(0, 1), items.rows(0, 1))
    chunk = max(1, budget // max(cost, 1))
    device = head_device(head)
    out = [
        head.score_pairs(
            texts.take(text_rows[s : s + chunk]).to(device),
            items.take(item_rows[s : s + chunk]).to(device),
            chunk,
        ).cpu()
        for s in range(0, len(text_rows), chunk)
    ]
    return torch.cat(out).float().numpy().reshape(shape)
