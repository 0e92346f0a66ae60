"""``vlret bench``: every method, and their combinations, on the same data with the same budget.

1. prepare the data once (the synthetic benchmark, its region features, the teachers' features, the
   synthetic video and class benchmarks; each cached, the features resumable);
2. plan each training row's epochs (the recipes' own, ``--steps`` for smoke runs, or ``--budget-minutes``:
   see :mod:`vlret.suite.budget`), written to ``plan.json`` and reused when the suite is run again;
3. run every cell (row x seed) whose record is missing, in dependency order, under one progress bar;
4. aggregate the records (mean and standard deviation over seeds) into ``summary.json``, ``table.md``
   and ``index.html`` (the table, R@1 against query cost with its Pareto front, and bar charts).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from vlret.data._io import read_json, write_json
from vlret.errors import ConfigError
from vlret.suite.budget import EVAL_RESERVE, probe_row, share_budget
from vlret.suite.cells import CellContext, SuiteData, run_cell, slug, train_recipe_overrides
from vlret.suite.rows import FAMILIES, PromptRow, TrainRow, run_order, synthetic_rows, with_rerankers
from vlret.suite.summary import summarise, write_outputs

#: crops of the 64-px synthetic images are encoded at 112 px, not EfficientNet's 224: a quarter of the
#: CPU time for crops that hold about 21 px of detail
REGION_INPUT_SIZE = 112


@dataclass
class SuiteSettings:
    """What a suite run is; a second run into the same folder must ask for the same."""

    suite: str = "synthetic"
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    seeds: list[int] = field(default_factory=lambda: [0])
    images: int | None = None  # None: the demo's benchmark (5,000 images)
    budget_minutes: float | None = None
    steps: int | None = None  # every training cell stops after this many steps (smoke runs)

    def check(self) -> None:
        if self.suite != "synthetic":
            raise ConfigError(f"suite must be 'synthetic', not {self.suite!r}")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from {list(FAMILIES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, not {self.seeds}")
        if self.budget_minutes is not None and self.steps is not None:
            raise ConfigError("give --budget-minutes or --steps, not both")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ConfigError(f"--budget-minutes must be positive, not {self.budget_minutes}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, not {self.steps}")


def run_suite(
    settings: SuiteSettings, out: str | Path, data_dir: str | Path = "data", progress: bool = True
) -> dict:
    """Run (or continue) the suite in ``out``; returns the summary (also written there)."""
    settings.check()
    out = Path(out)
    _check_same_settings(out, settings)
    started = time.perf_counter()
    rows = with_rerankers(synthetic_rows(), set(settings.families))
    ctx = CellContext(out, prepare_data(rows, Path(data_dir), settings.images, progress))
    plan = _plan(rows, settings, ctx, started)
    cells = [(row, seed) for row in run_order(rows) for seed in settings.seeds]
    bar = tqdm(cells, desc="bench cells", unit="cell", disable=not progress)
    for row, seed in bar:
        bar.set_postfix_str(f"{row.name} · seed {seed}")
        if ctx.record(row.name, seed) is None:
            run_cell(row, seed, ctx, plan.get(row.name, {}).get("overrides", []))
    summary = summarise(rows, settings.seeds, ctx, settings, plan)
    summary["seconds_this_run"] = round(time.perf_counter() - started, 1)
    write_outputs(summary, out)
    return summary


def prepare_data(rows, data_dir: Path, images: int | None, progress: bool) -> SuiteData:
    """The synthetic benchmark, and the region and teacher features when some row reads them."""
    from dataclasses import replace

    from vlret.data.synth import SynthConfig, write_benchmark

    name = "synth" if images is None else f"synth_{images}"
    config = SynthConfig() if images is None else replace(SynthConfig(), images=images)
    dataset_file = write_benchmark(data_dir / name, config)
    data = SuiteData(dataset_file)
    trained = [r for r in rows if isinstance(r, TrainRow)]
    if any(r.data == "precomp" for r in trained):
        data.precomp, data.region_count = _region_features(
            dataset_file, data_dir / f"{name}_precomp", progress
        )
    if any(r.teacher for r in trained):
        data.teacher = _teacher_features(dataset_file, data_dir / f"{name}_teacher", progress)
    if any(r.data == "video" for r in trained):
        from vlret.data.synth_video import write_video_benchmark

        data.video = write_video_benchmark(data_dir / "synth_video")
    if any(isinstance(r, PromptRow) for r in rows):
        data.classes = _class_benchmark(data_dir / "synth_classes")
    return data


def _class_benchmark(out: Path) -> Path:
    from vlret.data.synth_classes import SPLIT_FILE, write_class_benchmark

    split = out / SPLIT_FILE
    return split if split.is_file() else write_class_benchmark(out)


def _region_features(dataset_file: Path, out: Path, progress: bool) -> tuple[Path, int]:
    from vlret.data import load_dataset
    from vlret.data.region_features import RegionSettings, write_region_features

    written = write_region_features(
        load_dataset(dataset_file),
        out,
        RegionSettings(boxes="scene", input_size=REGION_INPUT_SIZE),
        dataset_file.parent / "scenes.json",
        progress=progress,
    )
    return out, int(written["regions"])


def _teacher_features(dataset_file: Path, out: Path, progress: bool) -> Path:
    from vlret.data import load_dataset
    from vlret.train.teacher import TeacherTowers, write_teacher_features

    if not _teacher_done(out):  # (a killed write resumes from its last chunk)
        train = load_dataset(dataset_file).split("train")
        write_teacher_features(train, "train", out, TeacherTowers(), progress=progress)
    return out


def _teacher_done(out: Path) -> bool:
    return (out / "train_image_embed_regu.npy").is_file() and (out / "train_text_embed_regu.npy").is_file()


def _plan(rows, settings: SuiteSettings, ctx: CellContext, started: float) -> dict[str, dict]:
    """Each training row's budget overrides, read back from ``plan.json`` when a run made it before."""
    path = ctx.out / "plan.json"
    if path.is_file():
        return read_json(path)["rows"]
    trained = [r for r in run_order(rows) if isinstance(r, TrainRow)]
    if settings.steps is not None:
        overrides = ["train.epochs=1", f"train.max_steps={settings.steps}"]
        rows_plan = {
            r.name: {"epochs": 1, "max_steps": settings.steps, "overrides": overrides} for r in trained
        }
        note = f"every training cell stops after {settings.steps} steps (--steps)"
    elif settings.budget_minutes is None:
        rows_plan = {r.name: {"epochs": None, "max_steps": None, "overrides": []} for r in trained}
        note = "every recipe's own epochs"
    else:
        probes = {}
        for row in trained:
            folder = ctx.out / "probes" / slug(row.name)
            init = ctx.out / "probes" / slug(row.init_from) if row.init_from else None
            overrides = train_recipe_overrides(row, settings.seeds[0], ctx, folder)
            if init is not None:  # start from the probe of the row it starts from
                overrides = [o for o in overrides if not o.startswith("model.name=")]
                overrides.append(f"model.name={init / 'checkpoints' / 'best' / 'model'}")
            probes[row.name] = probe_row(row, overrides, folder)
        spent = time.perf_counter() - started
        rows_plan = share_budget(settings.budget_minutes * 60, spent, probes, len(settings.seeds))
        note = (
            f"--budget-minutes {settings.budget_minutes:g}: probes and data took {spent:.0f} s; each training "
            f"cell gets an equal share of the rest, less {EVAL_RESERVE:.0%} kept for evaluation"
        )
    write_json(path, {"settings": asdict(settings), "note": note, "rows": rows_plan})
    return rows_plan


def _check_same_settings(out: Path, settings: SuiteSettings) -> None:
    path = out / "plan.json"
    if not path.is_file():
        return
    before = read_json(path)["settings"]
    now = asdict(settings)
    changed = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
    if changed:
        details = "; ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in changed.items())
        raise ConfigError(f"{out} holds a suite run with other settings ({details}); use another --out")
