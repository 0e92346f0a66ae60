"""VISA step 4: per-query min-max normalisation over the top-K and weighted fusion; the final ranking.

``F = w_base * N(base) + w_text * N(text)`` where ``N`` maps each query's K candidate scores to [0, 1]
(a constant row maps to 0). Only the top-K is re-ordered: its members stay above every other item, ties in
``F`` go to the higher base score, and items outside the top-K keep their base order below it. With
``w_text = 0`` the base ranking comes back unchanged.

``compat`` reproduces the official step-4 script instead: the candidates are the first K of NumPy's default
(unstable) descending argsort of the base row, and the final order is NumPy's default ascending argsort of a
dense row of fused scores (exactly 0 outside the top-K), reversed. Fused ties, and the order of everything
scoring 0 (every item outside the top-K, and a candidate lowest in both terms), then follow NumPy's sort,
which matters whenever K < 10.
"""

from __future__ import annotations

import numpy as np


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


def official_top_k(base_rows: np.ndarray, k: int) -> np.ndarray:
    """The official candidate selection: the first ``k`` of NumPy's default argsort of the negated row, in
    float64 (the official script reads its score matrices with ``np.loadtxt``)."""
    return np.argsort(-np.asarray(base_rows, dtype=np.float64), axis=1)[:, :k]


def compat_ranking(
    candidates: np.ndarray, fused: np.ndarray, n_items: int, ground_truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The official final ranking: ``(rank of each query's answer, candidates in their final order)``.

    Each query's fused scores are scattered into a dense row of zeros, which is sorted with NumPy's default
    ascending argsort and reversed, as the official ``R_t2i`` does.
    """
    ranks = np.empty(len(candidates), dtype=np.int64)
    reranked = np.empty_like(candidates)
    dense = np.zeros(n_items, dtype=np.float64)
    for q in range(len(candidates)):
        dense[:] = 0.0
        dense[candidates[q]] = fused[q]
        order = np.argsort(dense)[::-1]
        position = np.empty(n_items, dtype=np.int64)
        position[order] = np.arange(n_items)
        ranks[q] = position[ground_truth[q]]
        reranked[q] = candidates[q][np.argsort(position[candidates[q]])]
    return ranks, reranked
