"""The VISA pipeline: describe, ask, answer, score, fuse; every stage cached and resumable.

Work is split into units (a description per gallery item, questions per query, an answer per (item,
question, key phrases), a relevance score per (query, passage)); each unit's output is stored under a
content key as soon as it is computed, with up to ``concurrency`` backend calls in flight. A run killed at any
point and started again computes only the units that are missing. Processes that share a cache folder
(service replicas, shards) claim each unit before computing it, so a unit is computed once in total.

A run of ``n`` shards is split by unit, not by query (:meth:`Visa.work_shard`): shard ``i`` describes every
``n``-th distinct candidate item and asks and answers for every ``n``-th query, so no item is described by
two shards; a query's relevance scores need its candidates' descriptions, which other shards may make, so
each shard scores whatever is complete when it ends and :func:`vlret.rerank.visa.run.merge_visa` scores the
rest. :func:`vlret.rerank.visa.store.merge_stage` joins the shards' files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlret.claims import Claims
from vlret.data._io import file_digest
from vlret.errors import VlretError
from vlret.rerank.visa.config import (
    VisaConfig,
    build_describer,
    build_question_generator,
    build_reranker,
    build_vqa,
)
from vlret.rerank.visa.fusion import fuse, rerank_topk
from vlret.rerank.visa.prompts import PROMPT_VERSION, ParsedQuestions, assemble_passage, parse_questions
from vlret.rerank.visa.store import StageStore, content_key

STAGES = ("descriptions", "questions", "answers", "text_scores")
#: seconds between looks at the store for a unit another process is computing
CLAIM_POLL_SECONDS = 0.05


@dataclass
class StageStats:
    units: int = 0
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "units": self.units,
            "cache_hits": self.cache_hits,
            "computed": self.computed,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Candidate:
    """One gallery item in a query's top-K."""

    item_id: str
    media: Path
    base_score: float


@dataclass
class Reranked:
    """A query's candidates after VISA, best first."""

    item_ids: list[str]
    fused: list[float]
    base: list[float]
    text: list[float]
    questions: ParsedQuestions


@dataclass
class Roles:
    describer: object
    question_generator: object
    vqa: object
    reranker: object

    @classmethod
    def from_config(cls, config: VisaConfig) -> Roles:
        return cls(
            build_describer(config),
            build_question_generator(config),
            build_vqa(config),
            build_reranker(config),
        )


def _answer_jobs(
    parsed: list[ParsedQuestions], candidates: list[list[Candidate]]
) -> list[tuple[Path, str, str]]:
    """The stage-2 jobs of queries, in order: each candidate, each of its query's questions."""
    return [
        (c.media, question, pq.key_phrases)
        for pq, row in zip(parsed, candidates, strict=True)
        for c in row
        for question in pq.questions
    ]


@dataclass
class Visa:
    """VISA over a cache folder; see the module docstring."""

    config: VisaConfig
    roles: Roles
    cache_dir: Path
    shard: tuple[int, int] = (0, 1)
    frozen: tuple[str, ...] = ()  # stages whose units must all be stored already (merging): no model call
    stats: dict[str, StageStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self.stores = {stage: StageStore(self.cache_dir, stage, self.shard) for stage in STAGES}
        self.stats = {stage: StageStats() for stage in STAGES}
        self.claims = Claims(self.cache_dir / "claims")
        self.claims.folder.mkdir(exist_ok=True)

    # ----- generic stage machinery ----------------------------------------------------------------------
    def _run_units(
        self, stage: str, units: dict[str, Callable[[], object]], compute: bool = True
    ) -> dict[str, object]:
        """Compute the units that are not stored yet (concurrently); return every unit's value. With
        ``compute=False`` nothing is computed or counted: the values of the units already stored."""
        store, stats = self.stores[stage], self.stats[stage]
        if not compute:
            return {key: store.get(key) for key in units if key in store}
        started = time.perf_counter()
        stats.units += len(units)
        todo = {key: fn for key, fn in units.items() if key not in store}
        stats.cache_hits += len(units) - len(todo)
        if todo and stage in self.frozen:
            raise VlretError(
                f"{stage}: {len(todo)} of {len(units)} units are not in {self.cache_dir}; run every shard to completion first"
            )
        failures: list[BaseException] = []
        if todo:
            # Each unit is stored the moment it finishes; a failing unit does not stop the others.
            with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
                futures = [pool.submit(self._compute_once, stage, key, fn) for key, fn in todo.items()]
                for future in as_completed(futures):
                    try:
                        computed_here = future.result()
                        stats.computed += computed_here
                        stats.cache_hits += not computed_here
                    except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                        failures.append(exc)
        if failures:
            stats.seconds += time.perf_counter() - started
            raise VlretError(
                f"{stage}: {len(failures)} of {len(todo)} units failed (the rest are stored; run again to retry): {failures[0]}"
            ) from failures[0]
        stats.seconds += time.perf_counter() - started
        return {key: store.get(key) for key in units}

    def _compute_once(self, stage: str, key: str, compute: Callable[[], object]) -> bool:
        """Store unit ``key``'s value, computing it only if no other process sharing the cache is: the unit
        is claimed first (:mod:`vlret.claims`), and a unit another process holds is waited for in the store.
        Returns whether this process computed it."""
        store, name = self.stores[stage], f"{stage}.{key}"
        while True:
            if key in store:  # re-reads the lines other processes appended
                return False
            if self.claims.try_claim(name, lambda: key in store):
                try:
                    store.put(key, compute())
                    return True
                finally:
                    self.claims.release(name)  # also on failure: a waiting process then tries itself
            time.sleep(CLAIM_POLL_SECONDS)

    def _media_key(self, media: Path) -> str:
        # file_digest remembers each file by its identity: a file rewritten in place gets its new content's key
        return file_digest(media)[:24]

    # ----- stages ---------------------------------------------------------------------------------------
    def descriptions(self, media: Iterable[Path], compute: bool = True) -> dict[Path, str]:
        """Stage 0: a description per distinct media file (``compute=False``: those already stored)."""
        role = self.roles.describer
        paths = list(dict.fromkeys(Path(m) for m in media))
        keys = {p: content_key("describe", role.id, PROMPT_VERSION, self._media_key(p)) for p in paths}
        units = {keys[p]: (lambda p=p: role.describe(p)) for p in paths}
        values = self._run_units("descriptions", units, compute)
        return {p: values[keys[p]] for p in paths if keys[p] in values}

    def questions(self, queries: list[str], compute: bool = True) -> list[ParsedQuestions | None]:
        """Stage 1: the raw LLM reply per query is stored; parsing is re-done (it is cheap and versioned).
        With ``compute=False`` a query whose reply is not stored yet gets None."""
        role, n = self.roles.question_generator, self.config.questions
        keys = [content_key("questions", role.id, PROMPT_VERSION, q, n) for q in queries]
        units = {k: (lambda q=q: role.generate(q, n)) for k, q in zip(keys, queries, strict=True)}
        values = self._run_units("questions", units, compute)
        return [
            parse_questions(values[k], q, n, self.config.media) if k in values else None
            for k, q in zip(keys, queries, strict=True)
        ]

    def answers(self, jobs: list[tuple[Path, str, str]], compute: bool = True) -> list[str | None]:
        """Stage 2: an answer per (media, question, key phrases); identical jobs are computed once. With
        ``compute=False`` a job whose answer is not stored yet gets None."""
        role = self.roles.vqa
        keys = [
            content_key("answer", role.id, PROMPT_VERSION, self._media_key(m), q, kp) for m, q, kp in jobs
        ]
        units = {
            k: (lambda m=m, q=q, kp=kp: role.answer(m, q, kp))
            for k, (m, q, kp) in zip(keys, jobs, strict=True)
        }
        values = self._run_units("answers", units, compute)
        return [values.get(k) for k in keys]

    def text_scores(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Stage 3: reranker relevance per (query, passage)."""
        role = self.roles.reranker
        keys = [content_key("rerank", role.id, q, p) for q, p in pairs]
        units = {
            k: (lambda q=q, p=p: float(role.score([(q, p)])[0]))
            for k, (q, p) in zip(keys, pairs, strict=True)
        }
        values = self._run_units("text_scores", units)
        return [values[k] for k in keys]

    # ----- per query ------------------------------------------------------------------------------------
    def score_candidates(
        self, queries: list[str], candidates: list[list[Candidate]]
    ) -> tuple[np.ndarray, list[ParsedQuestions]]:
        """Text scores ``[n_queries, K]`` for each query's candidates (stages 0-3)."""
        parsed = self.questions(queries)
        descriptions = self.descriptions(c.media for row in candidates for c in row)
        answers = self.answers(_answer_jobs(parsed, candidates))
        scores = self._scores(queries, parsed, candidates, descriptions, answers)
        return scores, parsed

    def work_shard(self, queries: list[str], candidates: list[list[Candidate]]) -> list[ParsedQuestions]:
        """This shard's share of a run over all ``queries``, split by unit: descriptions of every
        ``n``-th distinct candidate item (so each item is described once in all), questions and answers of
        every ``n``-th query; then the relevance scores of every query whose inputs are all stored by now,
        whichever shard made them (the last shard to finish scores what the others left). Returns the
        parsed questions of this shard's queries."""
        index, count = self.shard
        media = list(dict.fromkeys(Path(c.media) for row in candidates for c in row))
        self.descriptions(media[index::count])
        mine = range(index, len(queries), count)
        parsed = self.questions([queries[q] for q in mine])
        self.answers(_answer_jobs(parsed, [candidates[q] for q in mine]))
        self.score_ready(queries, candidates)
        return parsed

    def score_ready(self, queries: list[str], candidates: list[list[Candidate]]) -> int:
        """Stage 3 for the queries whose questions, answers and candidate descriptions are all stored;
        returns how many queries were ready."""
        parsed = self.questions(queries, compute=False)
        descriptions = self.descriptions((c.media for row in candidates for c in row), compute=False)
        ready = [
            q
            for q, pq in enumerate(parsed)
            if pq is not None and all(Path(c.media) in descriptions for c in candidates[q])
        ]
        jobs = [_answer_jobs([parsed[q]], [candidates[q]]) for q in ready]
        # One look-up for every ready query: a miss re-reads the store's new lines, so once, not per query.
        found = iter(self.answers([job for block in jobs for job in block], compute=False))
        complete, answers = [], []
        for q, block_jobs in zip(ready, jobs, strict=True):
            block = [next(found) for _ in block_jobs]
            if None not in block:
                complete.append(q)
                answers += block
        if complete:
            rows, done = [candidates[q] for q in complete], [parsed[q] for q in complete]
            self._scores([queries[q] for q in complete], done, rows, descriptions, answers)
        return len(complete)

    def _scores(
        self,
        queries: list[str],
        parsed: list[ParsedQuestions],
        candidates: list[list[Candidate]],
        descriptions: dict[Path, str],
        answers: list[str],
    ) -> np.ndarray:
        """Stage 3: the passages of each query's candidates (answers in job order), scored."""
        answers = iter(answers)
        pairs = []
        for query, pq, row in zip(queries, parsed, candidates, strict=True):
            usable = pq.status != "fallback"
            for c in row:
                answer_block = [next(answers) for _ in pq.questions]
                passage = assemble_passage(
                    answer_block, descriptions[Path(c.media)], usable, self.config.compat
                )
                pairs.append((query, passage))
        scores = np.asarray(self.text_scores(pairs), dtype=np.float64)
        scores = scores.reshape(len(queries), -1) if queries else scores.reshape(0, 0)
        if not np.isfinite(scores).all():
            q, c = (int(x) for x in np.argwhere(~np.isfinite(scores))[0])
            raise VlretError(
                f"reranker {self.roles.reranker.id}: non-finite relevance score {scores[q, c]} "
                f"for query {queries[q]!r} and item {candidates[q][c].item_id!r}"
            )
        return scores

    def rerank(self, query: str, candidates: list[Candidate]) -> Reranked:
        """Re-rank one query's candidates (the Python API search uses)."""
        if not candidates:
            return Reranked(
                [], [], [], [], parse_questions("", query, self.config.questions, self.config.media)
            )
        text, parsed = self.score_candidates([query], [candidates])
        base = np.asarray([[c.base_score for c in candidates]])
        fused = fuse(base, text, self.config.w_base, self.config.w_text)
        order = rerank_topk(np.arange(len(candidates))[None], base, fused)[0]
        return Reranked(
            [candidates[i].item_id for i in order],
            [float(fused[0, i]) for i in order],
            [float(base[0, i]) for i in order],
            [float(text[0, i]) for i in order],
            parsed[0],
        )

    def usage(self) -> dict:
        out = {}
        for name in ("describer", "question_generator", "vqa", "reranker"):
            role = getattr(self.roles, name)
            model = getattr(role, "chat_model", None)
            if model is not None and hasattr(model, "usage"):
                out[name] = model.usage.as_dict()
        return out
