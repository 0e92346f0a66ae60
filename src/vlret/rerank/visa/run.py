"""A whole VISA run over an evaluation split: base top-K, the stages, fusion, metrics and a result file.

The base ranking comes from a score matrix (captions x items of the split, as ``vlret eval --scores`` takes
it) or from a model; only its top-K and the base rank of each query's answer are kept, so no dense text-score
matrix is ever formed. Outputs in ``out``: ``candidates.npy`` and ``base_topk.npy`` ``[n_queries, K]``,
``text_scores.npy`` and ``fused.npy`` (after a complete run), the stage caches (``*.jsonl``), ``run.json``
(the inputs, for ``visa-merge``) and ``result.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vlret.data._io import read_json, write_json
from vlret.data.records import RetrievalDataset
from vlret.errors import DataError, NonFiniteScoreError
from vlret.evaluate.first_stage import final_ranks, first_stage_topk
from vlret.evaluate.metrics import MEDIAN_RULES, direction_metrics
from vlret.evaluate.packaging import media_kind, median_rules
from vlret.evaluate.ranking import dot_block_fn, matrix_block_fn, pairwise_dot, ranking_dtype
from vlret.evaluate.results import make_result
from vlret.rerank.visa.config import VisaConfig
from vlret.rerank.visa.fusion import compat_ranking, fuse, official_top_k, rerank_topk
from vlret.rerank.visa.pipeline import Candidate, Roles, Visa
from vlret.rerank.visa.store import merge_stage

__all__ = ["base_from_embeddings", "base_from_scores", "final_ranks", "merge_visa", "run_visa"]


def base_from_scores(
    scores: np.ndarray, split: RetrievalDataset, k: int, compat: bool = False, source: str = "scores"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidates, their base scores, the base rank of each query's answer) from a score matrix; ``compat``
    picks the candidates as the official script does."""
    cap_item = split.caption_to_item
    hint = torch.from_numpy(
        np.asarray(scores[np.arange(len(cap_item)), cap_item], dtype=ranking_dtype(scores.dtype))
    )
    try:
        top, values, ranks = first_stage_topk(
            matrix_block_fn(scores), cap_item, scores.shape[1], k, hint, official_top_k if compat else None
        )
    except NonFiniteScoreError as exc:
        raise DataError(
            source, f"row {exc.row}, column {exc.column}", f"non-finite score {exc.value}"
        ) from None
    return top, values, ranks.t2i


def base_from_embeddings(
    text: np.ndarray, items: np.ndarray, split: RetrievalDataset, k: int, compat: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same from normalised embeddings (cosine scores, computed block by block)."""
    cap_item = split.caption_to_item
    t, g = torch.from_numpy(text), torch.from_numpy(items)
    top, values, ranks = first_stage_topk(
        dot_block_fn(t, g),
        cap_item,
        len(g),
        k,
        pairwise_dot(t, g, cap_item),
        official_top_k if compat else None,
    )
    return top, values, ranks.t2i


def _queries_of_shard(n_queries: int, shard: tuple[int, int]) -> np.ndarray:
    index, count = shard
    return np.arange(n_queries)[np.arange(n_queries) % count == index]


def run_visa(
    split: RetrievalDataset,
    candidates: np.ndarray,
    base_topk: np.ndarray,
    base_ranks: np.ndarray,
    config: VisaConfig,
    out: str | Path,
    shard: tuple[int, int] = (0, 1),
    roles: Roles | None = None,
    source: dict | None = None,
    query_limit: int | None = None,
    frozen: tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
) -> dict | None:
    """Run the stages (this shard's share of the units); with one shard (or after a merge), fuse and
    evaluate. ``frozen`` names stages whose units must all be stored already (a merge's).

    The stage stores live in ``out``, or in ``cache_dir`` when given: they are keyed by content, so runs
    over the same data (several first stages, say) can share one and call each model once per input.
    Returns the result dict, or None for a shard of several (run ``visa-merge`` once all shards are done).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(candidates) if query_limit is None else min(query_limit, len(candidates))
    candidates, base_topk, base_ranks = candidates[:n], base_topk[:n], base_ranks[:n]
    np.save(out / "candidates.npy", candidates.astype(np.int32))
    np.save(out / "base_topk.npy", base_topk.astype(np.float32))
    np.save(out / "base_ranks.npy", base_ranks.astype(np.int64))
    write_json(out / "run.json", {"config": config.to_dict(), "source": source or {}, "queries": n})
    started = time.perf_counter()
    visa = Visa(config, roles or Roles.from_config(config), Path(cache_dir or out), shard, frozen)
    texts = [c.text for c in split.captions][:n]
    rows = [
        [
            Candidate(split.items[j].id, split.media_path(split.items[j]), float(s))
            for j, s in zip(candidates[q], base_topk[q], strict=True)
        ]
        for q in range(n)
    ]
    mine = _queries_of_shard(n, shard)
    if shard[1] > 1:
        parsed = visa.work_shard(texts, rows)
    else:
        text_scores, parsed = visa.score_candidates(texts, rows)
    status = {s: sum(p.status == s for p in parsed) for s in ("ok", "partial", "fallback")}
    issues = [
        {"query_index": int(q), "query": texts[q], "status": p.status, "reply": p.raw}
        for q, p in zip(mine, parsed, strict=True)
        if p.status != "ok"
    ]
    suffix = "" if shard[1] == 1 else f".shard-{shard[0]}-of-{shard[1]}"
    write_json(
        out / f"question_issues{suffix}.json", issues
    )  # replies that needed a fallback, for inspection
    if shard[1] > 1:
        write_json(
            out / f"shard-{shard[0]}-of-{shard[1]}.json",
            {"stages": {k: v.as_dict() for k, v in visa.stats.items()}, "questions": status},
        )
        return None
    answers = split.caption_to_item[:n]
    return _fuse_and_evaluate(
        split,
        out,
        config,
        candidates,
        base_topk,
        base_ranks,
        answers,
        text_scores,
        visa,
        status,
        started,
        source,
    )


def _fuse_and_evaluate(
    split, out, config, candidates, base_topk, base_ranks, answers, text_scores, visa, status, started, source
):
    fused = fuse(base_topk, text_scores, config.w_base, config.w_text)
    if config.compat:
        visa_ranks, reranked = compat_ranking(candidates, fused, len(split.items), answers)
    else:
        reranked = rerank_topk(candidates, base_topk, fused)
        visa_ranks = final_ranks(reranked, base_ranks, answers)
    np.save(out / "text_scores.npy", text_scores.astype(np.float32))
    np.save(out / "fused.npy", fused.astype(np.float32))
    np.save(out / "reranked.npy", reranked.astype(np.int32))
    median = median_rules(split)[0]
    result = make_result(
        method="visa",
        data={
            "source": split.source,
            "split": split.items[0].split if split.items else None,
            "media": media_kind(split),
        },
        model=source or {},
        protocol={
            "name": "text->visual",
            "direction": "t2i",
            "queries": len(candidates),
            "gallery_items": len(split.items),
            "median_rank": MEDIAN_RULES[median],
        },
        metrics={
            "base": direction_metrics(base_ranks, "t2i", median),
            "visa": direction_metrics(visa_ranks, "t2i", median),
        },
        visa={
            "k": candidates.shape[1],
            "questions": config.questions,
            "w_base": config.w_base,
            "w_text": config.w_text,
            "compat": config.compat,
        },
        stages={k: v.as_dict() for k, v in visa.stats.items()},
        usage=visa.usage(),
        question_status=status,
        seconds={"total": round(time.perf_counter() - started, 3)},
    )
    write_json(out / "result.json", result)
    return result


def merge_visa(
    split: RetrievalDataset, config: VisaConfig, out: str | Path, roles: Roles | None = None
) -> dict:
    """Join the shard caches, score the queries no shard could (their candidates' descriptions were made by
    shards that finished later: the reranker is called for those alone), then fuse and evaluate. Every
    description, question and answer must be stored: no other model is called."""
    out = Path(out)
    for stage in ("descriptions", "questions", "answers", "text_scores"):
        merge_stage(out, stage)
    candidates, base_topk = np.load(out / "candidates.npy"), np.load(out / "base_topk.npy")
    base_ranks = np.load(out / "base_ranks.npy")
    run = read_json(out / "run.json")
    return run_visa(
        split,
        candidates,
        base_topk,
        base_ranks,
        config,
        out,
        (0, 1),
        roles or Roles.from_config(config),
        run["source"],
        frozen=("descriptions", "questions", "answers"),
    )
