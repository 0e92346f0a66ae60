"""VISA step 4: per-query min-max normalisation over the top-K and weighted fusion; the final ranking.

``F = w_base * N(base) + w_text * N(text)`` where ``N`` maps each query's K candidate scores to [0, 1]
(a constant row maps to 0). Only the top-K is re-ordered: its members stay above every other item, ties in
``F`` go to the higher base score, and items outside the top-K keep their base order below it. With
``w_text = 0`` the base ranking comes back unchanged.
"""

from __future__ import annotations

import numpy as np


def top_k(base_scores: np.ndarray, k: int) -> np.ndarray:
    """``[n_queries, k]`` gallery indices of the ``k`` highest base scores, best first (ties: lower index)."""
    k = min(k, base_scores.shape[1])
    part = np.argpartition(-base_scores, k - 1, axis=1)[:, :k]
    rows = np.arange(len(base_scores))[:, None]
    order = np.lexsort((part, -base_scores[rows, part]), axis=1)
    return np.take_along_axis(part, order, axis=1)


def minmax_rows(x: np.ndarray) -> np.ndarray:
    """Per row ``(x - min) / (max - min)``; a constant row becomes all zeros."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    span = hi - lo
    out = np.zeros_like(x)
    np.divide(x - lo, span, out=out, where=span > 0)
    return out


def fuse(
    base_topk: np.ndarray, text_topk: np.ndarray, w_base: float = 1.0, w_text: float = 1.0
) -> np.ndarray:
    """Fused scores ``[n_queries, K]`` of the candidates."""
    return w_base * minmax_rows(base_topk) + w_text * minmax_rows(text_topk)


def rerank_topk(candidates: np.ndarray, base_topk: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """The candidates re-ordered by fused score (descending); ties by base score, then by base position."""
    k = candidates.shape[1]
    position = np.broadcast_to(np.arange(k), candidates.shape)
    order = np.lexsort((position, -base_topk, -fused), axis=1)
    return np.take_along_axis(candidates, order, axis=1)


def ranks_after_rerank(
    base_scores: np.ndarray, reranked: np.ndarray, ground_truth: np.ndarray, tie_tolerance: float = 0.0
) -> np.ndarray:
    """0-based rank of each query's ground-truth item in the final ranking.

    Inside the top-K it is its position there; outside, ``K`` plus the number of other non-top-K items
    whose base score is at least its own (ties count against it, as in :mod:`vlret.evaluate.ranking`).
    """
    n, k = reranked.shape
    ranks = np.empty(n, dtype=np.int64)
    for q in range(n):
        hit = np.nonzero(reranked[q] == ground_truth[q])[0]
        if hit.size:
            ranks[q] = hit[0]
            continue
        row = base_scores[q]
        outside = np.ones(row.shape[0], dtype=bool)
        outside[reranked[q]] = False
        outside[ground_truth[q]] = False
        ranks[q] = k + int(np.count_nonzero(row[outside] >= row[ground_truth[q]] - tie_tolerance))
    return ranks


def compat_ranks(
    base_scores: np.ndarray, candidates: np.ndarray, fused: np.ndarray, ground_truth: np.ndarray
) -> np.ndarray:
    """The official scoring: a dense row of fused scores (0 outside the top-K) sorted with NumPy's default sort.

    The candidate that is lowest in both terms scores 0 and ties with every non-top-K item; the default
    (unstable) sort breaks that tie however it happens to. Reproduced for bit-for-bit comparisons only.
    """
    ranks = np.empty(len(candidates), dtype=np.int64)
    for q in range(len(candidates)):
        dense = np.zeros(base_scores.shape[1])
        dense[candidates[q]] = fused[q]
        order = np.argsort(-dense)
        ranks[q] = int(np.nonzero(order == ground_truth[q])[0][0])
    return ranks
