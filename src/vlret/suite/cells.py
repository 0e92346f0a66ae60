"""Running one cell of ``vlret bench`` (a row under one seed) and writing its record.

A cell's record (``cell.json``) holds the row's metrics and its costs: training and evaluation seconds,
text queries, pairs scored per query, model calls and tokens (VISA), parameters. A cell runs only once its
record is missing: training resumes from its last checkpoint, evaluation reads the feature cache and the
score store, VISA reads its stage caches, so a killed suite loses at most the work in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlret.data import RetrievalDataset, load_dataset
from vlret.data._io import read_json, write_json
from vlret.devices import pick_device
from vlret.errors import ConfigError
from vlret.evaluate.api import evaluate_ensemble, evaluate_model, stored_scores
from vlret.evaluate.encode import encode_dataset
from vlret.evaluate.packaging import select_split
from vlret.evaluate.protocols import get_protocol, prepare
from vlret.models import RetrievalModel, create_model
from vlret.suite.dataset import DataSource, RecipeEdits
from vlret.suite.rows import ITM_K, VISA_K, EnsembleRow, ItmRow, PromptRow, Row, TrainRow, VisaRow

METRIC_KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")


@dataclass
class SuiteData:
    """The suite's data: the images (none when the data is region features alone), and where rows need
    them their region features (SGR, SAF), the teachers' features (RVLR), the video benchmark and the class
    benchmark (prompts). ``val_split`` (when set) is where every recipe chooses its checkpoints;
    ``test_split`` is what every row is scored on."""

    images: DataSource | None
    precomp: Path | None = None
    teacher: Path | None = None
    region_count: int | None = None
    region_dim: int | None = None
    video: Path | None = None
    classes: Path | None = None
    val_split: str | None = None
    test_split: str = "test"
    _loaded: dict[str, RetrievalDataset] = field(default_factory=dict, repr=False, compare=False)

    def load(self, kind: str) -> RetrievalDataset:
        """The retrieval data of a row's ``data``: ``images``, ``precomp`` or ``video`` (read once)."""
        if kind not in self._loaded:
            if kind == "precomp":
                self._loaded[kind] = load_dataset(self.precomp, format="precomp")
            elif kind == "video":
                self._loaded[kind] = load_dataset(self.video)
            else:
                self._loaded[kind] = self.images.load()
        return self._loaded[kind]

    def media(self, kind: str) -> RetrievalDataset:
        """The data whose files re-rankers read: region features have the images behind them."""
        return self.load("images" if kind == "precomp" else kind)


@dataclass
class CellContext:
    """What every cell of a suite shares: where things go and what data they read."""

    out: Path
    data: SuiteData
    progress: bool = False
    edits: RecipeEdits = field(default_factory=RecipeEdits)
    visa_config: Path | None = None  # None: the offline backends (the synthetic suite)

    def cell_dir(self, row_name: str, seed: int) -> Path:
        return self.out / "cells" / slug(row_name) / f"seed-{seed}"

    def record(self, row_name: str, seed: int) -> dict | None:
        path = self.cell_dir(row_name, seed) / "cell.json"
        return read_json(path) if path.is_file() else None

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def scores(self) -> Path:
        return self.out / "scores"


def slug(name: str) -> str:
    """A folder name for a row: lower case, words joined by hyphens."""
    kept = "".join(c.lower() if c.isalnum() else " " for c in name)
    return "-".join(kept.split())


def run_cell(row: Row, seed: int, ctx: CellContext, train_overrides: list[str]) -> dict:
    """Run ``row`` under ``seed`` (``train_overrides`` come from the budget) and write its record."""
    folder = ctx.cell_dir(row.name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(row, TrainRow):
        record = _train_cell(row, seed, ctx, folder, train_overrides)
    elif isinstance(row, EnsembleRow):
        record = _ensemble_cell(row, seed, ctx)
    elif isinstance(row, ItmRow):
        record = _itm_cell(row, seed, ctx)
    elif isinstance(row, VisaRow):
        record = _visa_cell(row, seed, ctx, folder)
    else:
        record = _prompt_cell(row, seed, ctx, folder, train_overrides)
    record = {"row": row.name, "family": row.family, "seed": seed, **record}
    write_json(folder / "cell.json", record)
    return record


def train_recipe_overrides(row: TrainRow, seed: int, ctx: CellContext, output_dir: Path) -> list[str]:
    """The overrides that put ``row``'s recipe on the suite's data, seed and folders."""
    data = ctx.data
    overrides = [f"output_dir={output_dir}", f"train.seed={seed}"]
    if row.data == "precomp":
        overrides += [f"data.path={data.precomp}", "data.format=precomp", "data.media_root=null"]
        overrides.append(f"model.head.n_regions={data.region_count}")
        overrides.append(f"model.options.image_options.dim={data.region_dim}")
    elif row.data == "video":
        overrides += [f"data.path={data.video}", "data.format=auto"]
    else:
        source = data.images
        overrides += [f"data.path={source.path}", f"data.format={source.format}"]
        overrides.append(f"data.media_root={source.media_root or 'null'}")
    if data.val_split:
        overrides.append(f"data.val_split={data.val_split}")
    if row.teacher:
        overrides.append(f"teacher.cache={data.teacher}")
    if row.init_from:
        start = ctx.cell_dir(row.init_from, seed) / "train" / "checkpoints" / "best" / "model"
        overrides.append(f"model.name={start}")
    return [*overrides, *row.overrides, *ctx.edits.overrides(row.recipe, row.overrides)]


def _train_cell(row: TrainRow, seed: int, ctx: CellContext, folder: Path, budget: list[str]) -> dict:
    from vlret.train import Trainer, load_recipe
    from vlret.train.checkpoint import load_checkpoint
    from vlret.train.recipe import builtin_recipe

    overrides = train_recipe_overrides(row, seed, ctx, folder / "train")
    recipe = load_recipe(builtin_recipe(row.recipe), [*overrides, *budget])
    trainer = Trainer(recipe, resume=True, progress=ctx.progress)
    resumed_at = trainer.step
    summary = trainer.fit()
    train_seconds = _add_train_seconds(folder, summary["seconds"])
    model, _ = load_checkpoint(trainer.ckpt_dir, "best")
    model.to(trainer.device)  # evaluated where it trained
    result = evaluate_model(
        model,
        trainer.data,
        split=ctx.data.test_split,
        cache_dir=ctx.features,
        score_dir=ctx.scores,
        progress=False,
    )
    write_json(folder / "result.json", result)
    n_items = result["counts"]["gallery_items"]
    # pairs the head re-scores per query (its top k_test, or every item of a smaller gallery)
    head_k = min(model.head.k_test, n_items) if model.head.reranks else 0
    return {
        "metrics": _metrics(result["metrics"]),
        "model": str(trainer.ckpt_dir / "best" / "model"),
        "data": row.data,
        "head_k": head_k,
        "training": {
            "recipe": row.recipe,
            "overrides": list(row.overrides),
            "budget": list(budget),  # the plan's epochs or steps
            "steps": summary["steps"],
            "epochs": recipe.train.epochs,
            "max_steps": recipe.train.max_steps,
            "resumed_at_step": resumed_at,
        },
        "costs": {
            "train_seconds": train_seconds,
            "eval_seconds": result["seconds"]["total"],
            "queries": result["counts"]["captions"],
            "pairs_per_query": n_items + head_k,
            "model_calls": None,
            "tokens": None,
            "parameters": count_parameters(model),
        },
    }


def _add_train_seconds(folder: Path, seconds: float) -> float:
    """Training seconds over every process that worked on this cell (a kill loses only the seconds
    since the last call returned: the run itself resumes from its checkpoint)."""
    path = folder / "train_seconds.json"
    total = (read_json(path)["seconds"] if path.is_file() else 0.0) + seconds
    write_json(path, {"seconds": round(total, 2)})
    return round(total, 2)


def _evaluation_model(reference: str) -> RetrievalModel:
    """A trained cell's model, on the GPU when one is visible (as its training was, by default)."""
    return create_model(reference).to(pick_device())


def _ensemble_cell(row: EnsembleRow, seed: int, ctx: CellContext) -> dict:
    members = [_member(name, seed, ctx) for name in row.members]
    if len({m["data"] for m in members}) != 1:
        raise ConfigError(f"row {row.name!r}: an ensemble's members must read the same data")
    dataset = ctx.data.load(members[0]["data"])
    models = [_evaluation_model(m["model"]) for m in members]
    result = evaluate_ensemble(
        models,
        dataset,
        split=ctx.data.test_split,
        cache_dir=ctx.features,
        score_dir=ctx.scores,
        progress=False,
    )
    costs = [m["costs"] for m in members]
    return {
        "metrics": _metrics(result["metrics"]),
        "members": list(row.members),
        "data": members[0]["data"],
        "costs": {
            "train_seconds": sum(c["train_seconds"] for c in costs),
            # the members' matrices come from the score store: a query costs each member's scoring
            "eval_seconds": sum(c["eval_seconds"] for c in costs) + result["seconds"]["total"],
            "queries": result["counts"]["captions"],
            "pairs_per_query": sum(c["pairs_per_query"] for c in costs),
            "model_calls": None,
            "tokens": None,
            "parameters": sum(c["parameters"] for c in costs),
        },
    }


def _itm_cell(row: ItmRow, seed: int, ctx: CellContext) -> dict:
    from vlret.evaluate.reranked import evaluate_reranked

    first = _member(row.first, seed, ctx)
    head_cell = _member(row.head_from, seed, ctx)
    images = ctx.data.load("images")
    scores = first_stage_scores(row.first, seed, ctx)
    head_model = _evaluation_model(head_cell["model"])
    result = evaluate_reranked(
        head_model,
        images,
        first_stage=scores,
        k=ITM_K,
        split=ctx.data.test_split,
        cache_dir=ctx.features,
        progress=False,
        scores_source=row.first,
    )
    return {
        "metrics": _metrics(result["metrics"]),
        "first_stage": row.first,
        "first_stage_metrics": _metrics(result["first_stage"]["metrics"]),
        "costs": {
            "train_seconds": first["costs"]["train_seconds"] + head_cell["costs"]["train_seconds"],
            "eval_seconds": first["costs"]["eval_seconds"] + result["seconds"]["total"],
            "queries": result["counts"]["captions"],
            "pairs_per_query": first["costs"]["pairs_per_query"] + ITM_K,
            "model_calls": None,
            "tokens": None,
            "parameters": first["costs"]["parameters"] + head_cell["costs"]["parameters"],
        },
    }


def _visa_cell(row: VisaRow, seed: int, ctx: CellContext, folder: Path) -> dict:
    from vlret.rerank.visa.config import VisaConfig, load_visa_config
    from vlret.rerank.visa.run import base_from_scores, run_visa

    first = _member(row.first, seed, ctx)
    test = _test_split(ctx.data.media(first["data"]), ctx.data.test_split)
    if ctx.visa_config is None:
        config = VisaConfig(k=VISA_K, media=row.media)  # the offline backends
    else:
        config = load_visa_config(ctx.visa_config, {"media": row.media})
    scores = first_stage_scores(row.first, seed, ctx, k=config.k)
    candidates, base_topk, base_ranks = base_from_scores(scores, test, config.k, source=row.first)
    result = run_visa(
        test,
        candidates,
        base_topk,
        base_ranks,
        config,
        folder / "visa",
        source={"first_stage": row.first},
        cache_dir=ctx.out / "visa-cache",  # content-keyed: the rows share descriptions and answers
    )
    stages = result["stages"]
    k, head_k = candidates.shape[1], first.get("head_k", 0)
    head_extra = max(0, k - head_k) if head_k else 0  # an ITM first stage re-scores all of VISA's top K
    usage = result.get("usage", {}).values()
    tokens = sum(role["prompt_tokens"] + role["completion_tokens"] for role in usage)
    metrics = {k: result["metrics"]["visa"][k] for k in ("t2i_r1", "t2i_r5", "t2i_r10")}
    return {
        "metrics": metrics,
        "first_stage": row.first,
        "first_stage_metrics": {k: result["metrics"]["base"][k] for k in metrics},
        "costs": {
            "train_seconds": first["costs"]["train_seconds"],
            "eval_seconds": first["costs"]["eval_seconds"] + result["seconds"]["total"],
            "queries": len(candidates),
            "pairs_per_query": first["costs"]["pairs_per_query"] + head_extra + k,
            # what the re-ranking asks of the models, whether or not another row asked it before
            "model_calls": sum(s["units"] for s in stages.values()),
            "tokens": tokens or None,
            "parameters": first["costs"]["parameters"],
        },
    }


def _member(name: str, seed: int, ctx: CellContext) -> dict:
    record = ctx.record(name, seed)
    if record is None:
        raise ConfigError(f"row {name!r} (seed {seed}) has not run; it must run before the rows that use it")
    return record


def _test_split(dataset: RetrievalDataset, name: str) -> RetrievalDataset:
    split, _ = select_split(dataset, name, get_protocol("generic"))
    selected, _, _ = prepare(split, get_protocol("generic"))
    return selected


def first_stage_scores(name: str, seed: int, ctx: CellContext, k: int = 0) -> np.ndarray:
    """The test split's (captions x items) scores of row ``name``: its global embeddings' cosine, its
    head's stored matrix, or the mean of its members' (an ensemble). A re-ranking head (ITM) re-scores each
    text's top ``max(k_test, k)``, so that a re-ranker of the top ``k`` reads the head's scores for all
    of them. Region features must list the captions of the image test split in the same order (precomp
    features written from it do)."""
    record = _member(name, seed, ctx)
    if "members" in record:
        return np.mean([first_stage_scores(m, seed, ctx, k) for m in record["members"]], axis=0)
    model = _evaluation_model(record["model"])
    test_name = ctx.data.test_split
    test = _test_split(ctx.data.load(record["data"]), test_name)
    if record["data"] == "precomp":  # re-rankers read the images behind the region features
        _check_aligned(test, _test_split(ctx.data.media("precomp"), test_name), name)
    if model.head.reranks:
        return _reranked_scores(model, test, ctx, max(model.head.k_test, k))
    if model.head.is_dot_product:
        encoded = encode_dataset(model, test, cache_dir=ctx.features, progress=False)
        return encoded.text_embeds @ encoded.item_embeds.T
    matrix = stored_scores(model, test, "float32", ctx.scores)
    return np.asarray(matrix.array, dtype=np.float32)


def _reranked_scores(model: RetrievalModel, test: RetrievalDataset, ctx: CellContext, k: int) -> np.ndarray:
    """Scores that rank as a re-ranking head ranks text to image: each text's top ``k`` of the embeddings'
    cosine ordered by the head, above every other item, which keeps its cosine order. The top ``k`` are
    the head's scores plus one constant (which VISA's per-query min-max fusion removes)."""
    import torch

    from vlret.evaluate.first_stage import first_stage_topk
    from vlret.evaluate.ranking import dot_block_fn
    from vlret.evaluate.scoring import score_candidates

    encoded = encode_dataset(model, test, cache_dir=ctx.features, progress=False)
    texts, items = torch.from_numpy(encoded.text_embeds), torch.from_numpy(encoded.item_embeds)
    cosine = encoded.text_embeds @ encoded.item_embeds.T
    k = min(k, len(test.items))
    top, _, _ = first_stage_topk(dot_block_fn(texts, items), test.caption_to_item, len(test.items), k)
    rows = np.broadcast_to(np.arange(len(top))[:, None], top.shape)
    head = score_candidates(model.head, encoded.texts, encoded.items, rows, top)
    scores = cosine.astype(np.float64)
    lift = scores.max() - head.min() + 1.0  # every re-scored candidate above every other item
    np.put_along_axis(scores, top, head.astype(np.float64) + lift, axis=1)
    return scores


def _check_aligned(a: RetrievalDataset, b: RetrievalDataset, name: str) -> None:
    if [c.text for c in a.captions] != [c.text for c in b.captions] or len(a.items) != len(b.items):
        raise ConfigError(
            f"row {name!r}: its test split's captions are not those of the image test split in the same "
            "order, so its scores cannot pick images to re-rank"
        )


def _metrics(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in METRIC_KEYS if k in metrics}


def count_parameters(model: RetrievalModel) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _prompt_cell(row: PromptRow, seed: int, ctx: CellContext, folder: Path, budget: list[str]) -> dict:
    """Prompts on the backbone row's model, base-to-new on the class benchmark's test split."""
    import time

    from vlret.data.classes import read_split_zhou
    from vlret.train.prompt_trainer import evaluate_base_to_new, load_prompt_recipe, train_prompts, zero_shot
    from vlret.train.recipe import builtin_recipe

    backbone = _member(row.backbone, seed, ctx)
    data = read_split_zhou(ctx.data.classes, ctx.data.classes.parent / "images")
    started = time.perf_counter()
    if row.recipe is None:
        source, trained, learnt = zero_shot(backbone["model"]), None, 0
    else:
        # prompt runs count epochs, not steps: a smoke run (--steps) trains one epoch
        epochs = {"epochs": 1} if budget else {}
        run = load_prompt_recipe(
            builtin_recipe(row.recipe), [], {"model": backbone["model"], "seed": seed + 1, **epochs}
        )
        trained = train_prompts(run, data, folder / "run")
        source = trained["prompts"]
        learnt = _learnt_parameters(folder / "run" / "prompts")
    trained_at = time.perf_counter()
    metrics = evaluate_base_to_new(source, data, "test")
    done = time.perf_counter()
    return {
        "metrics": {k: float(metrics[k]) for k in ("base_acc", "new_acc", "hm", "base_map", "new_map")},
        "data": "classes",
        "costs": {
            "train_seconds": backbone["costs"]["train_seconds"] + (trained_at - started if trained else 0.0),
            "eval_seconds": done - trained_at,
            "queries": None,
            "pairs_per_query": None,
            "model_calls": None,
            "tokens": None,
            "parameters": learnt,
        },
    }


def _learnt_parameters(prompts: Path) -> int:
    """Numbers a prompt run learnt (context vectors, TextRefiner's cache and maps), from its saved files."""
    from safetensors.numpy import load_file

    return int(sum(a.size for f in prompts.glob("*.safetensors") for a in load_file(f).values()))
