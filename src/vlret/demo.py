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

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vlret.data._io import write_json
from vlret.data.synth import SynthConfig, write_benchmark
from vlret.evaluate.api import evaluate_model
from vlret.evaluate.encode import encode_dataset
from vlret.evaluate.ranking import dot_block_fn, topk_blocks
from vlret.evaluate.results import results_table
from vlret.index import build_index
from vlret.models import RetrievalModel, create_model
from vlret.report import RetrievedImage, SampleQuery, write_report
from vlret.rerank.visa.config import VisaConfig
from vlret.rerank.visa.run import base_from_embeddings, run_visa
from vlret.train import Trainer, load_recipe
from vlret.train.checkpoint import load_checkpoint
from vlret.train.logger import read_metrics
from vlret.train.recipe import builtin_recipe

DEMO_BENCHMARK = SynthConfig()  # the calibrated defaults: see SynthConfig


def sample_queries(
    model: RetrievalModel, data, n_queries: int = 8, k: int = 5, cache_dir: Path | None = None
) -> list[SampleQuery]:
    """``n_queries`` test captions spread over the split, each with its top-``k`` images."""
    test = data.split("test")
    encoded = encode_dataset(
        model, test, cache_dir=cache_dir, use_cache=cache_dir is not None, progress=False
    )
    picks = np.linspace(0, len(test.captions) - 1, n_queries).round().astype(int)
    texts = torch.from_numpy(encoded.text_embeds[picks])
    scores, indices = topk_blocks(dot_block_fn(texts, torch.from_numpy(encoded.item_embeds)), len(picks), k)
    answers = test.caption_to_item[picks]
    return [
        SampleQuery(
            test.captions[c].text,
            [
                RetrievedImage(test.media_path(test.items[j]), float(s), j == answer)
                for j, s in zip(idx, sc, strict=True)
            ],
        )
        for c, idx, sc, answer in zip(picks, indices, scores, answers, strict=True)
    ]


def run_demo(
    out: str | Path = "runs/demo",
    data_dir: str | Path = "data/synth",
    overrides: list[str] = (),
    progress: bool = True,
    images: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the demo; ``images`` shrinks the benchmark (for smoke tests), ``overrides`` adjust the recipe.
    A finished training run in ``out`` is reused; one with another recipe is refused unless ``overwrite``."""
    out, data_dir = Path(out), Path(data_dir)
    benchmark = DEMO_BENCHMARK if images is None else replace(DEMO_BENCHMARK, images=images)
    dataset_file = write_benchmark(data_dir, benchmark)
    recipe = load_recipe(
        builtin_recipe("demo_tiny"), [f"data.path={dataset_file}", f"output_dir={out / 'train'}", *overrides]
    )
    trainer = Trainer(recipe, resume=True, progress=progress, overwrite=overwrite)
    summary = trainer.fit()
    best, _ = load_checkpoint(trainer.ckpt_dir, "best")
    captions = [c.text for c in trainer.train_split.captions]
    untrained = create_model(
        recipe.model.name, captions=captions, seed=recipe.train.seed, **recipe.model.options
    )
    results = {}
    features = out / "features"
    for name, model in (("untrained", untrained), ("trained", best)):
        # One feature cache per demo run: the trained model's test features also serve the samples and VISA.
        result = evaluate_model(model, trainer.data, split="test", cache_dir=features, progress=False)
        result["model"]["run"] = name
        write_json(out / f"result_{name}.json", result)
        results[name] = result
    names = [f"{recipe.model.name} untrained", f"{recipe.model.name} trained"]
    table = results_table(list(results.values()), names)
    visa = run_visa_on_test(best, trainer.data.split("test"), out / "visa", features)
    table += "\n\nText→image on the test split, re-ranking the trained model's top 20 with VISA (offline backends):\n\n"
    table += visa_table(visa)
    n_test = results["trained"]["counts"]["gallery_items"]
    notes = [
        f"Synthetic benchmark {benchmark.images} images, difficulty {benchmark.difficulty}; "
        f"test gallery {n_test} images, {results['trained']['counts']['captions']} captions.",
        f"Training: {summary['steps']} steps; checkpoint chosen on the val split by {summary['metric']}.",
        "VISA on the trained model's top 20 (offline pixel-reading describer and VQA, rule question generator, "
        "lexical reranker): " + visa_summary(visa),
    ]
    report = write_report(
        out / "report.html",
        "vlret demo: tiny dual encoder on the synthetic benchmark",
        list(results.values()),
        names,
        read_metrics(out / "train" / "metrics.jsonl"),
        sample_queries(best, trainer.data, cache_dir=features),
        notes,
    )
    paths = {k: str(out / f"result_{k}.json") for k in results}
    paths["visa"] = str(out / "visa" / "result.json")
    index = build_index(
        str(trainer.ckpt_dir / "best" / "model"),
        out / "index",
        dataset=trainer.data.split("test"),
        progress=False,
    )
    photos = search_real_photos(out / "photos", out / "photos_index")
    return {
        "table": table,
        "results": paths,
        "report": str(report),
        "train": summary,
        "index": str(index),
        "photos": photos,
    }


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
    trainer = Trainer(recipe, resume=True, progress=progress, overwrite=overwrite)
    summary = trainer.fit()
    temporal, _ = load_checkpoint(trainer.ckpt_dir, "best")
    mean_pooled = VideoModel(temporal.frame_model, replace(temporal.config, pooling="mean"))
    features = out / "features"
    results = {}
    for name, model in (("meanP", mean_pooled), ("temporal", temporal)):
        result = evaluate_model(model, trainer.data, split="test", cache_dir=features, progress=False)
        result["model"]["run"] = name
        write_json(out / f"result_{name}.json", result)
        results[name] = result
    names = ["tiny-cnn frames, meanP", "tiny-cnn frames, temporal transformer"]
    table = results_table(list(results.values()), names)
    visa = run_visa_on_test(temporal, trainer.data.split("test"), out / "visa", features, media="video")
    table += "\n\nText→video on the test split, re-ranking the temporal model's top 20 with VISA (offline backends):\n\n"
    table += visa_table(visa)
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


def visa_table(result: dict) -> str:
    lines = ["| ranking | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
    for name, key in (("base", "base"), ("base + VISA", "visa")):
        m = result["metrics"][key]
        lines.append(
            f"| {name} | {100 * m['t2i_r1']:.1f} | {100 * m['t2i_r5']:.1f} | {100 * m['t2i_r10']:.1f} |"
        )
    return "\n".join(lines)


def visa_summary(result: dict) -> str:
    b, v = result["metrics"]["base"], result["metrics"]["visa"]
    return " / ".join(f"R@{k} {100 * b[f't2i_r{k}']:.1f} → {100 * v[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
