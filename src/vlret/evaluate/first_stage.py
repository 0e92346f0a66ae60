"""The hook every re-ranker plugs into: a first stage's top-K per query, and ranks after re-ordering it.

A first stage (a score matrix, or a model's embeddings) gives each query its top-K candidates (ties to the
lower index) and the base rank of its answer over the whole gallery. A re-ranker (VISA, a similarity head)
re-orders only the top-K; an answer inside it takes its new place, an answer outside it keeps its base rank,
which is at least K: everything the re-ranker did not see ranks after everything it did (RVLR's −100 floor).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vlret.errors import VlretError
from vlret.evaluate.ranking import (
    BlockFn,
    Ranks,
    iter_blocks,
    rank_blocks,
    topk_blocks,
)


def first_stage_topk(
    block_fn: BlockFn,
    text_to_item: np.ndarray,
    n_items: int,
    k: int,
    positive_hint: torch.Tensor | None = None,
    select: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, Ranks]:
    """(top-``k`` items per text ``[n_texts, k]``, their scores, the base ranks in both directions).

    ``select(rows, k)``, when given, picks each row's candidates instead of the stable top-k (VISA's
    official script picks them otherwise: :func:`vlret.rerank.visa.fusion.official_top_k`).
    """
    ranks = rank_blocks(block_fn, text_to_item, n_items, positive_hint=positive_hint)
    if select is None:
        values, indices = topk_blocks(block_fn, len(text_to_item), k)
        return indices, values, ranks
    indices, values = [], []
    for _, block in iter_blocks(block_fn, len(text_to_item)):
        rows = block.numpy()
        top = select(rows, k)
        indices.append(top)
        values.append(np.take_along_axis(rows, top, axis=1))
    return np.concatenate(indices), np.concatenate(values), ranks


def final_ranks(reranked: np.ndarray, base_ranks: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """An answer inside the top-K takes its new position; outside it keeps its base rank (which is >= K)."""
    hits = reranked == answers[:, None]
    inside = hits.any(axis=1)
    return np.where(inside, hits.argmax(axis=1), base_ranks)


def ranks_within_topk(scores: np.ndarray, correct: np.ndarray, base_ranks: np.ndarray) -> np.ndarray:
    """Ranks after re-scoring each query's top-K, by vlret's tie rule.

    ``scores[q, j]`` is the re-ranker's score of candidate ``j`` of query ``q``; ``correct[q, j]`` says
    whether that candidate is a right answer (several may be: image->text). A query with a right answer
    among its candidates ranks by the number of wrong candidates scoring at or above its best right one;
    one without keeps its base rank.
    """
    if not np.isfinite(scores).all():
        q, j = (int(x) for x in np.argwhere(~np.isfinite(scores))[0])
        raise VlretError(
            f"the re-ranker gave a non-finite score ({scores[q, j]}) to candidate {j} of query {q}"
        )
    best = np.where(correct, scores, -np.inf).max(axis=1)
    wrong_above = ((scores >= best[:, None]) & ~correct).sum(axis=1)
    return np.where(correct.any(axis=1), wrong_above, np.asarray(base_ranks))
