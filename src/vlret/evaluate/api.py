"""Run a protocol on a model or on a precomputed score matrix, and return a result dict."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vlret.data.images import check_media
from vlret.data.records import RetrievalDataset
from vlret.errors import ConfigError, DataError, NonFiniteScoreError, VlretError
from vlret.evaluate.encode import EncodedDataset, check_head_fits, encode_dataset, in_evaluation_mode
from vlret.evaluate.graded import graded_results
from vlret.evaluate.packaging import (
    check_finite_features,
    item_rank_rule,
    package_result,
    select_split,
    tie_rules,
)
from vlret.evaluate.protocols import DIRECTIONS, Fold, get_protocol, prepare
from vlret.evaluate.ranking import (
    DEFAULT_CHUNK,
    Ranks,
    dot_block_fn,
    dot_chunk,
    pairwise_dot,
    rank_blocks,
    ranking_dtype,
)
from vlret.evaluate.reranked import evaluate_reranked
from vlret.evaluate.score_cache import ScoreMatrix, default_score_dir
from vlret.evaluate.score_files import check_score_shape
from vlret.evaluate.scoring import (
    block_shape,
    fold_table,
    head_block_fn,
    head_positive_scores,
    score_block,
)
from vlret.models.base import RetrievalModel
from vlret.models.heads import SimilarityHead


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, not {direction!r}")


def evaluate_embeddings(
    item_embeds: np.ndarray,
    text_embeds: np.ndarray,
    selected: RetrievalDataset,
    folds: list[Fold],
    chunk: int | None = None,
    item_rule: str | None = None,
    ties: str = "pessimistic",
) -> list[Ranks]:
    """Ranks per fold under the dot product of normalised embeddings (in ``selected`` order), in blocks of
    ``chunk`` rows (default: :func:`dot_chunk`); item->text by ``item_rule`` (default:
    :func:`item_rank_rule` of ``selected``), ties by ``ties`` (:func:`tie_rules`)."""
    item_rule = item_rule or item_rank_rule(selected)
    rules = tie_rules(ties, selected)
    items, texts = torch.from_numpy(item_embeds), torch.from_numpy(text_embeds)
    cap_item = selected.caption_to_item
    out = []
    for f in folds:
        fold_texts = texts[f.caption_start : f.caption_stop]
        fold_items = items[f.item_start : f.item_stop]
        t2i = cap_item[f.caption_start : f.caption_stop] - f.item_start
        hint = pairwise_dot(fold_texts, fold_items, t2i)
        block_fn = dot_block_fn(fold_texts, fold_items, reuse=True)
        rows = chunk or dot_chunk(len(fold_items), texts.element_size())
        out.append(rank_blocks(block_fn, t2i, len(fold_items), rows, hint, item_rule, rules))
    return out


def evaluate_with_head(
    head: SimilarityHead,
    encoded: EncodedDataset,
    selected: RetrievalDataset,
    folds: list[Fold],
    chunk: int | None = None,
    budget: int | None = None,
    scores: ScoreMatrix | None = None,
    item_rule: str | None = None,
    ties: str = "pessimistic",
) -> list[Ranks]:
    """Ranks per fold under a similarity head, scored in blocks bounded over both axes; item->text by
    ``item_rule`` (default: :func:`item_rank_rule` of ``selected``), ties by ``ties``.

    With ``scores`` (a stored ``[captions, items]`` matrix of ``selected``), each fold's block is read from
    it where already computed and computed into it where not; the ranks are the same either way.
    ``chunk``: rows per block (default: :func:`dot_chunk` for a dot product, else :data:`DEFAULT_CHUNK`)."""
    item_rule = item_rule or item_rank_rule(selected)
    if head.is_dot_product:
        return evaluate_embeddings(
            encoded.item_embeds, encoded.text_embeds, selected, folds, chunk, item_rule, ties
        )
    chunk = chunk or DEFAULT_CHUNK
    if scores is not None:
        fill_score_matrix(head, encoded, folds, scores, chunk, budget)
        return rank_stored_scores([scores], selected, folds, chunk, item_rule, ties)
    rules = tie_rules(ties, selected)
    cap_item = selected.caption_to_item
    out = []
    for f in folds:
        texts = fold_table(encoded.texts, f.caption_start, f.caption_stop)
        items = fold_table(encoded.items, f.item_start, f.item_stop)
        t2i = cap_item[f.caption_start : f.caption_stop] - f.item_start
        hint = head_positive_scores(head, texts, items, t2i)
        block_fn = head_block_fn(head, texts, items, chunk, budget)
        out.append(rank_blocks(block_fn, t2i, len(items), chunk, hint, item_rule, rules))
    return out


def fill_score_matrix(
    head: SimilarityHead,
    encoded: EncodedDataset,
    folds: list[Fold],
    scores: ScoreMatrix,
    chunk: int = DEFAULT_CHUNK,
    budget: int | None = None,
) -> int:
    """Compute the folds' blocks of ``scores`` that are not stored yet; returns the rows computed."""
    head.eval()
    computed = 0
    for f in folds:
        items = fold_table(encoded.items, f.item_start, f.item_stop)
        text_chunk, item_chunk = block_shape(head, encoded.texts, items, chunk, budget)

        def compute(start: int, stop: int, items=items, shape=(text_chunk, item_chunk)) -> torch.Tensor:
            texts = encoded.texts.rows(start, stop)
            return score_block(head, texts, items, shape[1], text_chunk=shape[0]).float()

        rows, cols = (f.caption_start, f.caption_stop), (f.item_start, f.item_stop)
        computed += scores.fill(rows, cols, compute, chunk)
    return computed


def rank_stored_scores(
    matrices: list[ScoreMatrix],
    selected: RetrievalDataset,
    folds: list[Fold],
    chunk: int = DEFAULT_CHUNK,
    item_rule: str | None = None,
    ties: str = "pessimistic",
) -> list[Ranks]:
    """Ranks per fold under the mean of stored ``[captions, items]`` matrices of ``selected`` (one matrix:
    its own scores; several: an ensemble, e.g. SGRAF = (SGR + SAF) / 2)."""
    item_rule = item_rule or item_rank_rule(selected)
    rules = tie_rules(ties, selected)
    cap_item = selected.caption_to_item
    out = []
    for f in folds:
        t2i = cap_item[f.caption_start : f.caption_stop] - f.item_start

        def block_fn(start: int, stop: int, f=f) -> torch.Tensor:
            rows = (f.caption_start + start, f.caption_start + stop)
            parts = [m.block(rows, (f.item_start, f.item_stop)) for m in matrices]
            return parts[0] if len(parts) == 1 else torch.stack(parts).mean(0)

        rows = np.arange(f.caption_start, f.caption_stop)
        hint = np.mean([np.asarray(m.array[rows, t2i + f.item_start]) for m in matrices], axis=0)
        n_items, hint = f.item_stop - f.item_start, torch.from_numpy(hint)
        out.append(rank_blocks(block_fn, t2i, n_items, chunk, hint, item_rule, rules))
    return out


def stored_scores(
    model: RetrievalModel, selected: RetrievalDataset, token_dtype: str, score_dir: str | Path | None = None
) -> ScoreMatrix:
    """The stored ``[captions, items]`` matrix of ``model`` on the protocol-selected ``selected`` (created
    empty the first time), keyed like the feature cache: model, weights, records."""
    from vlret.evaluate.encode import cache_key

    key = cache_key(model, selected, token_dtype)
    folder = Path(score_dir or default_score_dir()) / key
    meta = {"model": model.identity(), "captions": len(selected.captions), "items": len(selected.items)}
    return ScoreMatrix(folder, (len(selected.captions), len(selected.items)), meta)


def evaluate_ensemble(
    models: list[RetrievalModel],
    dataset: RetrievalDataset,
    protocol: str = "generic",
    split: str | None = None,
    direction: str = "both",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    score_dir: str | Path | None = None,
    progress: bool = True,
    token_dtype: str = "float32",
    ties: str = "pessimistic",
) -> dict:
    """Run ``protocol`` on the mean of the models' score matrices (SGRAF = SGR and SAF, trained apart).

    Each model's matrix comes from the score store: a model evaluated before is neither encoded nor scored
    again; one that was not is encoded and scored once, and its matrix stored."""
    _check_direction(direction)
    if len(models) < 2:
        raise ConfigError("an ensemble needs at least two models")
    proto = get_protocol(protocol)
    started = time.perf_counter()
    split_data, split_name = select_split(dataset, split, proto)
    selected, _, folds = prepare(split_data, proto)
    matrices = []
    for model in models:
        matrix = stored_scores(model, selected, token_dtype, score_dir)
        missing = any(
            not matrix.covers((f.caption_start, f.caption_stop), (f.item_start, f.item_stop)) for f in folds
        )
        if missing:
            encoded = encode_dataset(model, selected, batch_size, cache_dir, True, progress, token_dtype)
            check_finite_features(encoded, selected, model.name)
            fill_score_matrix(model.head, encoded, folds, matrix)
        matrices.append(matrix)
    ranks = rank_stored_scores(matrices, selected, folds, ties=ties)
    done = time.perf_counter()
    return package_result(
        ranks,
        selected,
        folds,
        proto,
        split_name,
        direction,
        ties=ties,
        model={"name": "ensemble", "members": [m.identity() for m in models]},
        features={"scores": [str(m.folder) for m in matrices]},
        seconds={"total": round(done - started, 3)},
    )


@in_evaluation_mode
def evaluate_model(
    model: RetrievalModel,
    dataset: RetrievalDataset,
    protocol: str = "generic",
    split: str | None = None,
    direction: str = "both",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    on_error: str = "raise",
    progress: bool = True,
    token_dtype: str = "float32",
    score_dir: str | Path | None = None,
    relevance: str | None = None,
    mixed_mode: str = "clean",
    item_rule: str | None = None,
    ties: str = "pessimistic",
) -> dict:
    """Encode a split with ``model`` and run ``protocol`` on it, scoring with the model's head.

    A head that reads tokens keeps them in the feature cache as ``token_dtype`` (``float16`` halves its
    memory) and is evaluated block by block over both axes. A head that is not a dot product also keeps its
    score matrix (in ``score_dir``, by default next to the feature cache), so that another protocol on the
    same captions or an ensemble reads it instead of scoring again. A re-ranking head (ITM) is evaluated
    on the top-``k_test`` of the model's own embeddings (:func:`vlret.evaluate.reranked.evaluate_reranked`); the
    result records both stages. ``relevance`` (``"rouge-l"`` or a ``.npy`` file) adds single-modal and
    mixed-gallery NDCG (:mod:`vlret.evaluate.graded`; ``mixed_mode`` clean or compat). ``item_rule`` counts
    item->text ranks by ``"captions"`` or ``"items"`` (default: the field's convention for the data,
    :func:`item_rank_rule`). ``ties``: how a wrong entry tied with the right one is ranked
    (:func:`~vlret.evaluate.packaging.tie_rules`: pessimistic, optimistic, or the protocol's released code)."""
    _check_direction(direction)
    if model.head.reranks and ties != "pessimistic":
        raise ConfigError(
            f"{model.name}: a re-ranking head (ITM) ranks its shortlist with ties against the model; --ties "
            "applies to models scored by their own head"
        )
    if model.head.reranks:  # a cross-encoder (ITM): the embeddings' top-k_test, re-scored by the head
        return evaluate_reranked(
            model,
            dataset,
            k=model.head.k_test,
            protocol=protocol,
            split=split,
            direction=direction,
            batch_size=batch_size,
            cache_dir=cache_dir,
            use_cache=use_cache,
            progress=progress,
            token_dtype=token_dtype,
            relevance=relevance,
            mixed_mode=mixed_mode,
            on_error=on_error,
        )
    proto = get_protocol(protocol)
    started = time.perf_counter()
    split_data, split_name = select_split(dataset, split, proto)
    split_data = check_media(split_data, on_error)  # type: ignore[arg-type]
    selected, _, folds = prepare(split_data, proto)
    check_head_fits(model, selected)
    encoded = encode_dataset(model, selected, batch_size, cache_dir, use_cache, progress, token_dtype)
    encoded_at = time.perf_counter()
    check_finite_features(encoded, selected, model.name)
    stored = None
    if use_cache and not model.head.is_dot_product:
        stored = stored_scores(model, selected, token_dtype, score_dir)
    try:
        ranks = evaluate_with_head(
            model.head, encoded, selected, folds, scores=stored, item_rule=item_rule, ties=ties
        )
    except NonFiniteScoreError as exc:
        raise VlretError(
            f"{model.name}: the {model.head.name} head gave a non-finite score ({exc.value}) for caption "
            f"{exc.row} of a fold and its item {exc.column}; the model's weights or features hold NaN or infinity"
        ) from None
    done = time.perf_counter()
    extra = {}
    counter = getattr(model, "unknown_words", None)
    coverage = counter([c.text for c in selected.captions]) if counter is not None else None
    if coverage is not None:  # a word vocabulary: how many caption words it did not know
        extra["vocabulary"] = {"words": coverage[0], "unknown_words": coverage[1]}
    if relevance is not None:
        extra.update(graded_results(model, encoded, selected, relevance, mixed_mode, cache_dir))
    return package_result(
        ranks,
        selected,
        folds,
        proto,
        split_name,
        direction,
        item_rule,
        ties,
        **extra,
        model=model.identity(),
        features={
            "from_cache": encoded.from_cache,
            **({"scores": str(stored.folder)} if stored is not None else {}),
            "dim": int(encoded.item_embeds.shape[1]),
            "head": model.head.describe(),
        },
        seconds={
            "encode": round(encoded_at - started, 3),
            "score": round(done - encoded_at, 3),
            "total": round(done - started, 3),
        },
    )


def evaluate_scores(
    scores: np.ndarray,
    dataset: RetrievalDataset,
    protocol: str = "generic",
    split: str | None = None,
    direction: str = "both",
    source: str | None = None,
    item_rule: str | None = None,
    ties: str = "pessimistic",
) -> dict:
    """Run ``protocol`` on a precomputed (texts x items) score matrix of one split (item->text ranks by
    ``item_rule``; default: the data's, :func:`item_rank_rule`; ties by ``ties``).

    Rows are the split's captions in the order the annotations list them, columns the split's items in order
    (higher = more similar). A numpy memmap (``np.load(path, mmap_mode="r")``) is read block by block.
    """
    _check_direction(direction)
    proto = get_protocol(protocol)
    started = time.perf_counter()
    split_data, split_name = select_split(dataset, split, proto)
    check_score_shape(scores, len(split_data.captions), len(split_data.items), split_name, source)
    selected, keep, folds = prepare(split_data, proto)
    item_rule = item_rule or item_rank_rule(selected)
    rules = tie_rules(ties, selected)
    keep_rows = np.asarray(keep)
    cap_item = selected.caption_to_item
    dtype = ranking_dtype(scores.dtype)  # rank in the input's precision
    ranks = []
    for f in folds:
        rows = keep_rows[f.caption_start : f.caption_stop]
        t2i = cap_item[f.caption_start : f.caption_stop] - f.item_start

        def block_fn(start: int, stop: int, rows=rows, f=f) -> torch.Tensor:
            block = scores[rows[start:stop]][:, f.item_start : f.item_stop]
            return torch.from_numpy(np.asarray(block, dtype=dtype))

        hint = torch.from_numpy(np.asarray(scores[rows, t2i + f.item_start], dtype=dtype))
        try:
            ranks.append(
                rank_blocks(
                    block_fn,
                    t2i,
                    f.item_stop - f.item_start,
                    positive_hint=hint,
                    item_rule=item_rule,
                    ties=rules,
                )
            )
        except NonFiniteScoreError as exc:
            row, column = int(rows[exc.row]), f.item_start + exc.column
            raise DataError(
                source or "scores",
                f"row {row}, column {column}",
                f"non-finite score {exc.value}; scores must be finite numbers",
            ) from None
    done = time.perf_counter()
    return package_result(
        ranks,
        selected,
        folds,
        proto,
        split_name,
        direction,
        item_rule,
        ties,
        model={"name": "precomputed scores", "scores": source},
        seconds={"score": round(done - started, 3), "total": round(done - started, 3)},
    )
