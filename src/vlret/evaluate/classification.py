"""Classification metrics from a logits matrix ``[images, classes]``: top-1 accuracy, and the same scores
read the other way as retrieval, each class name a query ranking the images (mean average precision).

Reading one matrix both ways is what lets learnt prompts serve as text-to-image search: the prompt's class
embedding is a query against the gallery's image embeddings, and the scores are the classifier's logits.
"""

from __future__ import annotations

import numpy as np


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of rows whose largest logit is at their label."""
    if len(labels) == 0:
        return 0.0
    return 100.0 * float(np.mean(np.asarray(logits).argmax(1) == np.asarray(labels)))


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of ranking items by ``scores`` (descending) when ``relevant`` marks the positives:
    the mean over the positives of the precision at each one's rank (0 when there are none)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(relevant, dtype=bool)[order]
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the positives
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def class_retrieval_map(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean average precision (%) over the classes that have images, each class ranking all the images."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    present = np.unique(labels)
    if len(present) == 0:
        return 0.0
    return 100.0 * float(np.mean([average_precision(logits[:, c], labels == c) for c in present]))
