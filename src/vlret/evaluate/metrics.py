"""Recall@K, median and mean rank, rsum: from 0-based ranks, as fractions (R@1 = 0.5 means 50%).

The median rank follows the convention of the tables a result is compared with (:data:`MEDIAN_RULES`):
image-text papers (VSE++, SCAN and those after them) report ``floor(median) + 1``; text-video papers report
CLIP4Clip's ``median + 1``, unfloored, and with several captions per video CLIP4Clip's ``torch.median``,
which takes the lower of the two middle ranks.
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)

#: how the median rank is taken, by name: what each names is said in every result's protocol
MEDIAN_RULES = {
    "floor": "floor(median of the 1-based ranks), as VSE++ and SCAN report it",
    "clip4clip": "median of the 1-based ranks, unfloored (np.median), as CLIP4Clip reports it",
    "clip4clip-lower": "the lower of the two middle 1-based ranks (torch.median), CLIP4Clip's multi-caption rule",
}


def median_rank(ranks: np.ndarray, rule: str = "floor") -> float:
    """The median of 0-based ``ranks``, as a 1-based rank, by ``rule`` (a key of :data:`MEDIAN_RULES`)."""
    ranks = np.sort(np.asarray(ranks))
    if rule == "floor":
        return float(np.floor(np.median(ranks)) + 1)
    if rule == "clip4clip":
        return float(np.median(ranks) + 1)
    if rule == "clip4clip-lower":
        return float(ranks[(len(ranks) - 1) // 2] + 1)
    raise ValueError(f"median rule must be one of {list(MEDIAN_RULES)}, not {rule!r}")


def tie_entries(ranks: np.ndarray, ties: np.ndarray | None) -> np.ndarray:
    """The ranks the metrics count: ``ranks`` as they are, or with ``ties``, ``rank, rank + 1, ..., rank +
    ties`` for each query: one entry per tied position, as CLIP4Clip's compute_metrics keeps them
    (:mod:`vlret.evaluate.ranking`, the ``entries`` tie rule)."""
    ranks = np.asarray(ranks)
    if ties is None:
        return ranks
    counts = np.asarray(ties) + 1
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(ranks, counts) + (np.arange(int(counts.sum())) - first)


def direction_metrics(
    ranks: np.ndarray, prefix: str, median: str = "floor", ties: np.ndarray | None = None
) -> dict[str, float]:
    """``{prefix}_r1/r5/r10`` (fractions), ``{prefix}_medr`` (by the ``median`` rule), ``{prefix}_meanr``
    (mean + 1); with ``ties``, over the entries of :func:`tie_entries`."""
    ranks = tie_entries(ranks, ties)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"{prefix}_r{k}": float(np.mean(ranks < k)) for k in RECALL_KS}
    out[f"{prefix}_medr"] = median_rank(ranks, median)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(
    t2i_ranks: np.ndarray,
    i2t_ranks: np.ndarray | None,
    medians: tuple[str, str] = ("floor", "floor"),
    t2i_ties: np.ndarray | None = None,
    i2t_ties: np.ndarray | None = None,
) -> dict[str, float]:
    """Both directions and rsum (the sum of the six recalls), or text->item only when ``i2t_ranks`` is None;
    ``medians``: the median rule of each direction (text->item, item->text); ``*_ties``: tied entries
    counted apart (the ``entries`` tie rule)."""
    out = direction_metrics(t2i_ranks, "t2i", medians[0], t2i_ties)
    if i2t_ranks is None:
        out["t2i_rsum"] = sum(out[f"t2i_r{k}"] for k in RECALL_KS)
        return out
    out.update(direction_metrics(i2t_ranks, "i2t", medians[1], i2t_ties))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in RECALL_KS)
    return out


def mean_metrics(folds: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over folds (COCO 1K reports the mean of five 1K folds)."""
    return {key: float(np.mean([f[key] for f in folds])) for key in folds[0]}
