"""A similarity head as a re-ranker: re-score a first stage's top-k (the ITM ``k_test`` path of ALBEF,
X-VLM and RVLR).

The first stage (a model's global embeddings, by default the re-ranking model's own, or a score matrix)
ranks every query against the whole gallery and keeps its top-``k``; the head scores only those ``k`` pairs
per query, in both directions. Ranks follow :mod:`vlret.evaluate.first_stage`: inside the top-``k`` by the
head's score, outside it the base rank (after everything re-scored). The result records both stages.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vlret.data.images import check_media
from vlret.data.records import RetrievalDataset
from vlret.errors import ConfigError, DataError, NonFiniteScoreError
from vlret.evaluate.defaults import DEFAULT_K
from vlret.evaluate.encode import FeatureTable, encode_dataset
from vlret.evaluate.first_stage import first_stage_topk, ranks_within_topk
from vlret.evaluate.graded import graded_results
from vlret.evaluate.packaging import (
    check_finite_features,
    fold_metrics,
    median_rules,
    package_result,
    select_split,
)
from vlret.evaluate.protocols import DIRECTIONS, Fold, get_protocol, prepare
from vlret.evaluate.ranking import (
    BlockFn,
    Ranks,
    dot_block_fn,
    pairwise_dot,
    ranking_dtype,
    topk_blocks,
)
from vlret.evaluate.score_files import check_score_shape
from vlret.evaluate.scoring import fold_table, score_candidates
from vlret.models.base import RetrievalModel
from vlret.models.heads import SimilarityHead


def rerank_fold(
    head: SimilarityHead,
    texts: FeatureTable,
    items: FeatureTable,
    t2i: np.ndarray,
    first: BlockFn,
    first_transposed: BlockFn,
    hint: torch.Tensor | None,
    k: int,
    direction: str,
) -> tuple[Ranks, Ranks]:
    """(first-stage ranks, re-ranked ranks) of one fold; ``first`` gives (texts x items) score blocks and
    ``first_transposed`` (items x texts) ones, ``t2i`` each text's item within the fold."""
    n_texts, n_items = len(t2i), len(items)
    top_items, _, base = first_stage_topk(first, t2i, n_items, min(k, n_items), hint)
    rows = np.broadcast_to(np.arange(n_texts)[:, None], top_items.shape)
    scores = score_candidates(head, texts, items, rows, top_items)
    t2i_ranks = ranks_within_topk(scores, top_items == t2i[:, None], base.t2i)
    if direction == "t2i":
        return base, Ranks(t2i_ranks, base.i2t)
    _, top_texts = topk_blocks(first_transposed, n_items, min(k, n_texts))
    columns = np.broadcast_to(np.arange(n_items)[:, None], top_texts.shape)
    scores = score_candidates(head, texts, items, top_texts, columns)
    i2t_ranks = ranks_within_topk(scores, t2i[top_texts] == columns, base.i2t)
    return base, Ranks(t2i_ranks, i2t_ranks)


def _embedding_stage(text_embeds: np.ndarray, item_embeds: np.ndarray):
    """Per-fold first-stage block functions from normalised embeddings (cosine)."""
    texts, items = torch.from_numpy(np.asarray(text_embeds)), torch.from_numpy(np.asarray(item_embeds))

    def stage(f: Fold, t2i: np.ndarray):
        t = texts[f.caption_start : f.caption_stop]
        g = items[f.item_start : f.item_stop]
        return dot_block_fn(t, g), dot_block_fn(g, t), pairwise_dot(t, g, t2i)

    return stage


def _matrix_stage(scores: np.ndarray, keep: list[int]):
    """Per-fold first-stage block functions from a (captions x items) score matrix of the whole split."""
    keep_rows, dtype = np.asarray(keep), ranking_dtype(scores.dtype)

    def stage(f: Fold, t2i: np.ndarray):
        rows = keep_rows[f.caption_start : f.caption_stop]

        def block(start: int, stop: int) -> torch.Tensor:
            return torch.from_numpy(
                np.asarray(scores[rows[start:stop]][:, f.item_start : f.item_stop], dtype)
            )

        def transposed(start: int, stop: int) -> torch.Tensor:
            columns = np.asarray(scores[:, f.item_start + start : f.item_start + stop][rows], dtype)
            return torch.from_numpy(np.ascontiguousarray(columns.T))

        hint = torch.from_numpy(np.asarray(scores[rows, t2i + f.item_start], dtype))
        return block, transposed, hint

    return stage


def evaluate_reranked(
    model: RetrievalModel,
    dataset: RetrievalDataset,
    first_stage: RetrievalModel | np.ndarray | None = None,
    k: int = DEFAULT_K,
    protocol: str = "generic",
    split: str | None = None,
    direction: str = "both",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    token_dtype: str = "float32",
    scores_source: str | None = None,
    relevance: str | None = None,
    mixed_mode: str = "clean",
    on_error: str = "raise",
) -> dict:
    """Evaluate ``model``'s head as a re-ranker of a first stage's top-``k`` under ``protocol``.

    ``first_stage`` is a model (its global embeddings' cosine), a (captions x items) score matrix of the
    split (``scores_source`` names its file), or None for ``model``'s own global embeddings. The result's
    ``metrics`` are the re-ranked ones; ``first_stage.metrics`` those of the first stage alone.
    ``relevance`` adds single-modal and mixed NDCG of the model (see :func:`vlret.evaluate.api.evaluate_model`);
    ``on_error="skip"`` leaves out items whose media cannot be read (with their captions), as evaluation does.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of candidates >= 1, not {k!r}")
    proto = get_protocol(protocol)
    started = time.perf_counter()
    split_data, split_name = select_split(dataset, split, proto)
    if isinstance(first_stage, np.ndarray):
        counts = (len(split_data.captions), len(split_data.items))
        check_score_shape(first_stage, *counts, split_name, scores_source)
    split_data = check_media(split_data, on_error)  # type: ignore[arg-type]
    selected, keep, folds = prepare(split_data, proto)
    encoded = encode_dataset(model, selected, batch_size, cache_dir, use_cache, progress, token_dtype)
    check_finite_features(encoded, selected, model.name)
    if isinstance(first_stage, np.ndarray):
        stage = _matrix_stage(first_stage, keep)
        source = {"name": "precomputed scores", "scores": scores_source}
    else:
        first_model = model if first_stage is None else first_stage
        first = (
            encoded
            if first_stage is None
            else encode_dataset(first_model, selected, batch_size, cache_dir, use_cache, progress)
        )
        check_finite_features(first, selected, first_model.name)
        stage = _embedding_stage(first.text_embeds, first.item_embeds)
        source = first_model.identity()
    encoded_at = time.perf_counter()
    base_ranks, reranked = [], []
    cap_item = selected.caption_to_item
    for f in folds:
        t2i = cap_item[f.caption_start : f.caption_stop] - f.item_start
        block, transposed, hint = stage(f, t2i)
        texts = fold_table(encoded.texts, f.caption_start, f.caption_stop)
        items = fold_table(encoded.items, f.item_start, f.item_stop)
        try:
            base, after = rerank_fold(model.head, texts, items, t2i, block, transposed, hint, k, direction)
        except NonFiniteScoreError as exc:
            raise DataError(
                scores_source or "first stage",
                f"row {exc.row}, column {exc.column}",
                f"non-finite score {exc.value}",
            ) from None
        base_ranks.append(base)
        reranked.append(after)
    done = time.perf_counter()
    first_metrics, first_folds = fold_metrics(base_ranks, direction, median_rules(selected))
    extra = {}
    if relevance is not None:
        extra = graded_results(model, encoded, selected, relevance, mixed_mode, cache_dir)
    return package_result(
        reranked,
        selected,
        folds,
        proto,
        split_name,
        direction,
        model=model.identity(),
        first_stage={
            "source": source,
            "metrics": first_metrics,
            "folds": first_folds if len(folds) > 1 else None,
        },
        rerank={
            "head": model.head.describe(),
            "k": k,
            "tie_rule": "wrong candidates at or above the answer count",
        },
        **extra,
        seconds={
            "encode": round(encoded_at - started, 3),
            "score": round(done - encoded_at, 3),
            "total": round(done - started, 3),
        },
    )
