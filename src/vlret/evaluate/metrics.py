"""Recall@K, median and mean rank, rsum: from 0-based ranks, as fractions (R@1 = 0.5 means 50%)."""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)


def direction_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_r1/r5/r10`` (fractions), ``{prefix}_medr`` (floor(median rank)+1), ``{prefix}_meanr`` (mean+1)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"{prefix}_r{k}": float(np.mean(ranks < k)) for k in RECALL_KS}
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(t2i_ranks: np.ndarray, i2t_ranks: np.ndarray | None) -> dict[str, float]:
    """Both directions and rsum (the sum of the six recalls), or text->item only when ``i2t_ranks`` is None."""
    out = direction_metrics(t2i_ranks, "t2i")
    if i2t_ranks is None:
        out["t2i_rsum"] = sum(out[f"t2i_r{k}"] for k in RECALL_KS)
        return out
    out.update(direction_metrics(i2t_ranks, "i2t"))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in RECALL_KS)
    return out


def mean_metrics(folds: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over folds (COCO 1K reports the mean of five 1K folds)."""
    return {key: float(np.mean([f[key] for f in folds])) for key in folds[0]}
