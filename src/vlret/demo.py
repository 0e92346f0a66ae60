"""``vlret demo``: the main job on the embedded default, end to end on a 2-core CPU.

1. write the synthetic benchmark (cached: reused when the folder holds the same settings);
2. train the tiny dual encoder with the built-in ``demo_tiny`` recipe (resumes if interrupted, and a
   finished run is reused), choosing the checkpoint on the validation split;
3. evaluate the best checkpoint, and the same architecture untrained, on the test split;
4. re-rank the trained model's text->image top 20 with VISA on offline backends that read the pixels;
5. print the tables and write the result JSONs and an HTML report (curves and sample queries);
6. index the test images (and captions) with the trained model, ready for ``vlret serve``;
7. index a few real photos that installed packages ship with ``conse``, the training-free real-photo model,
   and search them by text (:func:`search_real_photos`).

``vlret demo --video`` runs the same steps on the synthetic video benchmark instead (:func:`run_video_demo`):
the tiny CNN with the temporal transformer, meanP (the untrained-pooling baseline is the same frame tower
averaged) beside it, VISA reading the clips' frames, and an index of the test clips that the page plays.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlret.data._io import write_json
from vlret.data.synth import SceneObject, SynthConfig, read_scenes, write_benchmark
from vlret.data.synth_truth import caption_fits
from vlret.devices import describe_machine
from vlret.evaluate.api import evaluate_model
from vlret.evaluate.encode import encode_dataset
from vlret.evaluate.ranking import dot_block_fn, topk_blocks
from vlret.evaluate.results import results_table
from vlret.index import build_index
from vlret.models import RetrievalModel, create_model
from vlret.report import RetrievedImage, SampleQuery, SampleSection, write_report
from vlret.rerank.visa.config import VisaConfig
from vlret.rerank.visa.run import base_from_embeddings, run_visa
from vlret.train import Trainer, load_recipe
from vlret.train.checkpoint import load_checkpoint
from vlret.train.logger import read_metrics
from vlret.train.recipe import builtin_recipe

DEMO_BENCHMARK = SynthConfig()  # the calibrated defaults: see SynthConfig


def sample_queries(
    model: RetrievalModel,
    data,
    n_queries: int = 8,
    k: int = 5,
    cache_dir: Path | None = None,
    scenes: dict[str, list[SceneObject]] | None = None,
) -> list[SampleQuery]:
    """``n_queries`` test captions spread over the split, each with its top-``k`` images; with the synthetic
    benchmark's ``scenes`` (item path -> objects), images the caption is also true of are marked ``fits``."""
    test = data.split("test")
    encoded = encode_dataset(
        model, test, cache_dir=cache_dir, use_cache=cache_dir is not None, progress=False
    )
    picks = np.linspace(0, len(test.captions) - 1, n_queries).round().astype(int)
    texts = torch.from_numpy(encoded.text_embeds[picks])
    scores, indices = topk_blocks(dot_block_fn(texts, torch.from_numpy(encoded.item_embeds)), len(picks), k)
    return [
        _sample(test, c, [int(j) for j in idx], [float(x) for x in sc], scenes)
        for c, idx, sc in zip(picks, indices, scores, strict=True)
    ]


def _sample(test, caption: int, items: list[int], scores: list[float], scenes) -> SampleQuery:
    text, answer = test.captions[caption].text, test.caption_to_item[caption]
    return SampleQuery(
        text,
        [
            RetrievedImage(
                test.media_path(test.items[j]),
                score,
                j == answer,
                scenes is not None and caption_fits(text, scenes.get(test.items[j].path, [])),
            )
            for j, score in zip(items, scores, strict=True)
        ],
    )


def visa_samples(test, visa_dir: Path, scenes=None, n_queries: int = 4, k: int = 5) -> SampleSection:
    """Queries whose first result VISA changed, spread over the split, each shown before and after, under
    a paragraph that counts how the paired images moved."""
    candidates = np.load(visa_dir / "candidates.npy")
    reranked = np.load(visa_dir / "reranked.npy")
    fused = np.load(visa_dir / "fused.npy")  # per candidate, in the candidates' order
    base_scores = np.load(visa_dir / "base_topk.npy")
    answers = test.caption_to_item
    before = _answer_positions(candidates, answers)
    after = _answer_positions(reranked, answers)
    changed = np.flatnonzero(candidates[:, 0] != reranked[:, 0])
    up, down = int((after < before).sum()), int((after > before).sum())
    intro = (
        f"VISA changed the first result of {len(changed)} of {len(answers)} queries; the paired image moved "
        f"up for {up} and down for {down}. A few of the changed queries, the base top {k} then VISA's."
    )
    samples = []
    for q in changed[np.linspace(0, len(changed) - 1, min(n_queries, len(changed))).round().astype(int)]:
        fused_of = dict(zip(candidates[q].tolist(), fused[q].tolist(), strict=True))
        base = _sample(test, q, candidates[q, :k].tolist(), base_scores[q, :k].tolist(), scenes)
        visa = _sample(test, q, reranked[q, :k].tolist(), [fused_of[j] for j in reranked[q, :k]], scenes)
        base.label, visa.label = "base", "after VISA"
        samples += [base, visa]
    return SampleSection("VISA re-ranking", samples, intro)


def _answer_positions(rankings: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Each query's answer's position in its ranking (0-based), or the ranking's length when absent."""
    hits = rankings == answers[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), rankings.shape[1])


def load_scenes(data_dir: Path) -> dict[str, list[SceneObject]] | None:
    """The synthetic benchmark's scenes by item path, or None when the folder has none."""
    file = data_dir / "scenes.json"
    if not file.is_file():
        return None
    return {path: [SceneObject(**o) for o in s["objects"]] for path, s in read_scenes(file).items()}


#: each stage of ``make demo`` and about how long it takes on a 2-core CPU (a fresh clone on 2026-12-05 took
#: 21 min 41 s with 2 min 45 s of set-up); training is timed by its own pace once it runs (:meth:`progress`)
DEMO_STAGES = (
    ("write the synthetic benchmark", 20.0),
    ("train the tiny dual encoder", 920.0),
    ("evaluate it and the untrained model", 8.0),
    ("re-rank with VISA (offline backends)", 165.0),
    ("write the report", 2.0),
    ("index the test images", 3.0),
    ("index and search real photos with conse", 17.0),
)


#: the shares of a stage's work at which its measured pace is reported (after its first steps)
PROGRESS_REPORTS = (0.1, 0.25, 0.5, 0.75)
#: steps a stage's pace is measured over before the first estimate (the first steps warm up)
WARM_STEPS = 5


class StageClock:
    """Prints each stage as it starts (``[2/7] ...``) and when it ends, with the time it took and an estimate
    of what is left: the typical time of the remaining stages, scaled by how this machine compared so far.

    A stage that reports its progress (:meth:`progress`: training, step by step) is timed by its own
    measured pace: at 10%, 25%, 50% and 75% of its steps the clock says how long the stage still needs at
    that pace, and the whole demo with the later stages scaled alike."""

    def __init__(self, stages=DEMO_STAGES, enabled: bool = True, stream=None) -> None:
        self.stages, self.enabled, self.stream = list(stages), enabled, stream or sys.stderr
        self.started = time.perf_counter()
        self.done = 0
        self.typical_done = 0.0
        self.current = 0
        self._pace_from: tuple[float, int] | None = None
        self._reports = list(PROGRESS_REPORTS)

    @contextmanager
    def stage(self, what: str) -> Iterator[None]:
        n = next(i for i, (name, _) in enumerate(self.stages) if name == what)
        self._say(f"[{n + 1}/{len(self.stages)}] {what} ...")
        began = time.perf_counter()
        self.current, self._pace_from, self._reports = n, None, list(PROGRESS_REPORTS)
        yield
        self.typical_done += self.stages[n][1]
        self.done = n + 1
        left = self.estimate_left()
        tail = f"; about {_duration(left)} left" if left else ""
        self._say(f"[{n + 1}/{len(self.stages)}] {what}: {_duration(time.perf_counter() - began)}{tail}")

    def progress(self, done: int, total: int) -> None:
        """The stage in progress has done ``done`` of its ``total`` steps: at the next share of
        :data:`PROGRESS_REPORTS`, say what is left at the pace measured since its first steps."""
        now = time.perf_counter()
        if self._pace_from is None:
            self._pace_from = (now, done)  # steps done before (a resumed run) are not this process's pace
            return
        began, first = self._pace_from
        if done - first < WARM_STEPS or not self._reports or done / total < self._reports[0]:
            return
        while self._reports and done / total >= self._reports[0]:
            self._reports.pop(0)
        per_step = (now - began) / (done - first)
        stage_left = per_step * (total - done)
        typical = self.stages[self.current][1]
        pace = (
            (per_step * (total - first)) / typical if typical else 1.0
        )  # this stage against its typical time
        later = sum(seconds for _, seconds in self.stages[self.current + 1 :]) * min(max(pace, 0.5), 4.0)
        self._say(
            f"    {done}/{total} steps at {per_step:.2f} s each: about {_duration(stage_left)} left in this "
            f"stage, {_duration(stage_left + later)} in all"
        )

    def estimate_left(self) -> float:
        typical_left = sum(seconds for _, seconds in self.stages[self.done :])
        speed = (time.perf_counter() - self.started) / self.typical_done if self.typical_done else 1.0
        return typical_left * min(max(speed, 0.5), 4.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _say(self, line: str) -> None:
        if self.enabled:  # through tqdm: a line said while the training's bar is drawn goes above the bar
            tqdm.write(line, file=self.stream)
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def run_demo(
    out: str | Path = "runs/demo",
    data_dir: str | Path = "data/synth",
    overrides: list[str] = (),
    progress: bool = True,
    images: int | None = None,
    overwrite: bool = False,
    command: str = "make demo",
) -> dict:
    """Run the demo; ``images`` shrinks the benchmark (for smoke tests), ``overrides`` adjust the recipe.
    A finished training run in ``out`` is reused; one with another recipe is refused unless ``overwrite``.
    ``command`` is what the report names as the way to reproduce it."""
    out, data_dir = Path(out), Path(data_dir)
    clock = StageClock(enabled=progress)
    benchmark = DEMO_BENCHMARK if images is None else replace(DEMO_BENCHMARK, images=images)
    with clock.stage("write the synthetic benchmark"):
        dataset_file = write_benchmark(data_dir, benchmark)
    recipe = load_recipe(
        builtin_recipe("demo_tiny"), [f"data.path={dataset_file}", f"output_dir={out / 'train'}", *overrides]
    )
    with clock.stage("train the tiny dual encoder"):
        trainer = Trainer(recipe, resume=not overwrite, progress=progress, overwrite=overwrite)
        trainer.on_step = clock.progress  # estimates from the measured pace of the training itself
        summary = trainer.fit()
    best, _ = load_checkpoint(trainer.ckpt_dir, "best")
    test = trainer.data.split("test")
    with clock.stage("evaluate it and the untrained model"):
        captions = [c.text for c in trainer.train_split.captions]
        untrained = create_model(
            recipe.model.name, captions=captions, seed=recipe.train.seed, **recipe.model.options
        )
        results = _evaluate_runs({"untrained": untrained, "trained": best}, trainer.data, out)
    with clock.stage("re-rank with VISA (offline backends)"):
        visa = run_visa_on_test(best, test, out / "visa", out / "features")
    name = recipe.model.name
    rows = [*results.values(), visa_row(visa)]
    names = [f"{name} untrained", f"{name} trained", f"{name} trained + VISA"]
    table = _table_with_caveat(rows, names)
    n_test = results["trained"]["counts"]["gallery_items"]
    notes = [
        f"Synthetic benchmark {benchmark.images} images, difficulty {benchmark.difficulty}; "
        f"test gallery {n_test} images, {results['trained']['counts']['captions']} captions.",
        f"Training: {summary['steps']} steps; checkpoint chosen on the val split by {summary['metric']}.",
    ]
    with clock.stage("write the report"):
        scenes = load_scenes(data_dir)
        report = write_report(
            out / "report.html",
            "vlret demo: tiny dual encoder on the synthetic benchmark",
            rows,
            names,
            read_metrics(out / "train" / "metrics.jsonl"),
            sample_queries(best, trainer.data, cache_dir=out / "features", scenes=scenes),
            notes,
            more_samples=[visa_samples(test, out / "visa", scenes)],
            caveat=VISA_CAVEAT,
            about={
                "machine": describe_machine(),
                "run time": f"{_duration(clock.elapsed())} up to this report (cached stages are reused)",
                "command": command,
                "written": time.strftime("%Y-%m-%d %H:%M %Z"),
            },
        )
    paths = {k: str(out / f"result_{k}.json") for k in results}
    paths["visa"] = str(out / "visa" / "result.json")
    with clock.stage("index the test images"):
        index = build_index(  # the model may be a new one: a full build, not an update
            str(trainer.ckpt_dir / "best" / "model"),
            out / "index",
            dataset=test,
            progress=False,
            rebuild=True,
        )
    with clock.stage("index and search real photos with conse"):
        photos = search_real_photos(out / "photos", out / "photos_index")
    return {
        "table": table,
        "results": paths,
        "report": str(report),
        "train": summary,
        "index": str(index),
        "photos": photos,
        "seconds": round(clock.elapsed(), 1),
    }


#: what the demo's table and report say about its VISA row
VISA_CAVEAT = (
    "The VISA row re-ranks the trained model's text→image top 20 with offline stand-in backends (a describer "
    "and a question answerer that segment and name the shapes in each image or frame, a pattern question "
    "generator, a lexical reranker), not the paper's VLMs and LLM: it shows the pipeline working on this "
    "benchmark's vocabulary, not what VISA gains on real data. It re-ranks text→image only, so its image→text "
    "cells are empty."
)


def visa_row(visa: dict) -> dict:
    """VISA's result as a row of the results table: its text→image metrics after re-ranking."""
    return {"metrics": visa["metrics"]["visa"], "protocol": {"name": "generic"}, "data": visa["data"]}


def _evaluate_runs(models: dict[str, RetrievalModel], data, out: Path) -> dict[str, dict]:
    """Evaluate each named model on the test split; each result is written to ``out/result_NAME.json``."""
    results = {}
    for name, model in models.items():
        # One feature cache per demo run: a model's test features also serve the samples and VISA.
        result = evaluate_model(model, data, split="test", cache_dir=out / "features", progress=False)
        result["model"]["run"] = name
        write_json(out / f"result_{name}.json", result)
        results[name] = result
    return results


def _table_with_caveat(rows: list[dict], names: list[str]) -> str:
    """The results table (the last row VISA's) and what the VISA row is, for the terminal."""
    return results_table(rows, names) + "\n\n" + textwrap.fill(VISA_CAVEAT, 110, break_on_hyphens=False)


#: what the demo asks of the real photos
PHOTO_QUERIES = ("a cat", "a cup of coffee", "a flower")


def search_real_photos(folder: Path, index_path: Path, queries=PHOTO_QUERIES, k: int = 3) -> dict:
    """Index the sample photos with ``conse`` and search them: ``{"index", "photos", "queries": {query:
    [(file, score), ...]}}``."""
    from vlret.data.sample_photos import write_sample_photos
    from vlret.index import Searcher

    photos = write_sample_photos(folder)
    index = build_index("conse", index_path, images=folder, progress=False)
    searcher = Searcher(index)
    found = {q: [(h.path, h.score) for h in searcher.text_to_image(q, k)] for q in queries}
    return {"index": str(index), "photos": len(photos), "queries": found}


#: the video demo's training budget: the temporal recipe, shortened to fit a few minutes on 2 cores
VIDEO_DEMO_EPOCHS = 4


def run_video_demo(
    out: str | Path = "runs/demo_video",
    data_dir: str | Path = "data/synth_video",
    overrides: list[str] = (),
    progress: bool = True,
    clips: int | None = None,
    overwrite: bool = False,
) -> dict:
    """The demo on the synthetic video benchmark: train the temporal recipe briefly (``overrides`` adjust
    it), evaluate it and its meanP twin (the same trained frame tower, frames averaged), re-rank with VISA on
    the clips' frames and index the test clips; ``clips`` shrinks the benchmark (smoke tests)."""
    from vlret.data.synth_video import VideoSynthConfig, write_video_benchmark
    from vlret.models.video import VideoModel

    out, data_dir = Path(out), Path(data_dir)
    dataset_file = write_video_benchmark(
        data_dir, VideoSynthConfig() if clips is None else VideoSynthConfig(clips=clips)
    )
    settings = [
        f"data.path={dataset_file}",
        f"output_dir={out / 'train'}",
        f"train.epochs={VIDEO_DEMO_EPOCHS}",
    ]
    recipe = load_recipe(builtin_recipe("video_temporal_synth_cpu"), [*settings, *overrides])
    trainer = Trainer(recipe, resume=not overwrite, progress=progress, overwrite=overwrite)
    summary = trainer.fit()
    temporal, _ = load_checkpoint(trainer.ckpt_dir, "best")
    mean_pooled = VideoModel(temporal.frame_model, replace(temporal.config, pooling="mean"))
    features = out / "features"
    results = _evaluate_runs({"meanP": mean_pooled, "temporal": temporal}, trainer.data, out)
    visa = run_visa_on_test(temporal, trainer.data.split("test"), out / "visa", features, media="video")
    names = ["tiny-cnn frames, meanP", "tiny-cnn frames, temporal transformer", "temporal transformer + VISA"]
    table = _table_with_caveat([*results.values(), visa_row(visa)], names)
    index = build_index(
        str(trainer.ckpt_dir / "best" / "model"),
        out / "index",
        dataset=trainer.data.split("test"),
        progress=False,
    )
    paths = {k: str(out / f"result_{k}.json") for k in results}
    paths["visa"] = str(out / "visa" / "result.json")
    return {"table": table, "results": paths, "train": summary, "index": str(index)}


def run_visa_on_test(
    model: RetrievalModel, test, out: Path, cache_dir: Path | None = None, media: str = "image"
) -> dict:
    """VISA with the offline backends over the model's test-split top-K (cached in ``out``)."""
    encoded = encode_dataset(
        model, test, cache_dir=cache_dir, use_cache=cache_dir is not None, progress=False
    )
    config = VisaConfig(media=media)
    base = base_from_embeddings(encoded.text_embeds, encoded.item_embeds, test, config.k, config.compat)
    return run_visa(test, *base, config, out, source={"model": model.identity()})
