"""``vlret bench``: every method, and their combinations, on the same data with the same budget.

1. prepare the data once (the synthetic benchmark, or a user's dataset (:mod:`vlret.suite.dataset`); the
   region features, the teachers' features, the synthetic video and class benchmarks; each cached, the
   features resumable);
2. plan each training row's epochs (the recipes' own, ``--steps`` for smoke runs, or ``--budget-minutes``:
   see :mod:`vlret.suite.budget`), written to ``plan.json`` and reused when the suite is run again;
3. run every cell (row x seed) whose record is missing, in dependency order, under one progress bar;
4. aggregate the records (mean and standard deviation over seeds) into ``summary.json``, ``table.md``
   and ``index.html`` (the table, R@1 against query cost with its Pareto front, and bar charts).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from vlret.data._io import read_json, write_json
from vlret.data.formats import dataset_fingerprint
from vlret.errors import ConfigError
from vlret.locks import claimed
from vlret.suite.budget import EVAL_RESERVE, probe_row, share_budget
from vlret.suite.cells import CellContext, SuiteData, run_cell, slug, train_recipe_overrides
from vlret.suite.dataset import (
    DataSource,
    RecipeEdits,
    check_hub_weights,
    open_source,
    parse_weights,
    region_fit,
    region_shape,
    validation_split,
)
from vlret.suite.rows import (
    DATASET_FAMILIES,
    FAMILIES,
    RECIPE_SETS,
    PromptRow,
    TrainRow,
    dataset_rows,
    run_order,
    synthetic_rows,
    with_rerankers,
)
from vlret.suite.summary import summarise, write_outputs

#: crops of the 64-px synthetic images are encoded at 112 px, not EfficientNet's 224: a quarter of the
#: CPU time for crops that hold about 21 px of detail
REGION_INPUT_SIZE = 112


#: recipe keys the suite sets per cell, and what sets them (``--set`` of one is refused)
SUITE_KEYS = {
    "train.seed": "--seeds gives each cell its seed",
    "output_dir": "each cell trains in its own folder under --out",
    "data.path": "--suite names the data",
    "data.format": "--format",
    "data.media_root": "--media-root",
    "data.val_split": "the data's own validation split",
    "teacher.cache": "the suite writes the teachers' features",
}


@dataclass
class SuiteSettings:
    """What a suite run is; a second run into the same folder must ask for the same.

    ``suite``: ``synthetic`` or the path of a user's dataset (its ``format``, ``media_root``, ``recipes``
    set and ``test_split`` go with it); ``families``: None for every family the data can run; ``weights``:
    ``HUB_ID=FOLDER`` pairs and ``sets``: ``KEY=VALUE`` recipe edits (:class:`RecipeEdits`);
    ``visa_config``: VISA's backends (the offline ones by default, on the synthetic suite only)."""

    suite: str = "synthetic"
    families: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    images: int | None = None  # None: the demo's benchmark (5,000 images)
    budget_minutes: float | None = None
    steps: int | None = None  # every training cell stops after this many steps (smoke runs)
    format: str = "auto"
    media_root: str | None = None
    recipes: str = "f30k"
    test_split: str = "test"
    visa_config: str | None = None
    weights: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return self.suite == "synthetic"

    def picked_families(self) -> set[str]:
        """The families asked for, or every one the suite can run."""
        if self.families is not None:
            return set(self.families)
        if self.synthetic:
            return set(FAMILIES)
        return {f for f in DATASET_FAMILIES if f != "visa" or self.visa_config}

    def check(self) -> None:
        if not self.synthetic:
            self._check_dataset()
        elif (self.format, self.media_root, self.recipes, self.test_split) != ("auto", None, "f30k", "test"):
            raise ConfigError("--format, --media-root, --recipes and --test-split go with --suite PATH")
        if self.families is not None:
            unknown = sorted(set(self.families) - set(FAMILIES))
            if unknown:
                raise ConfigError(f"unknown methods {unknown}; choose from {list(FAMILIES)}")
        if self.recipes not in RECIPE_SETS:
            raise ConfigError(f"--recipes must be one of {RECIPE_SETS}, not {self.recipes!r}")
        if self.visa_config is not None and not Path(self.visa_config).is_file():
            raise ConfigError(f"--visa-config {self.visa_config}: no such file")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, not {self.seeds}")
        if self.images is not None:
            from vlret.data.synth import SynthConfig

            SynthConfig(images=self.images)  # its own bounds, before anything is written
        if self.budget_minutes is not None and self.steps is not None:
            raise ConfigError("give --budget-minutes or --steps, not both")
        if self.budget_minutes is not None and not (
            math.isfinite(self.budget_minutes) and self.budget_minutes > 0
        ):
            raise ConfigError(
                f"--budget-minutes must be a finite number of minutes > 0, not {self.budget_minutes}"
            )
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, not {self.steps}")
        self._check_sets()

    def _check_sets(self) -> None:
        """``--set`` may not change what the suite itself sets per cell: a ``train.seed`` would make every
        seed's cell the same run."""
        planned = {"train.epochs", "train.max_steps"} if self.steps or self.budget_minutes else set()
        for assignment in self.sets:
            key = assignment.split("=", 1)[0].strip()
            if key in SUITE_KEYS:
                raise ConfigError(f"--set {assignment}: the suite sets {key} itself ({SUITE_KEYS[key]})")
            if key in planned:
                raise ConfigError(
                    f"--set {assignment}: --steps / --budget-minutes plan {key} for every cell; leave both "
                    "out to run each recipe's own epochs with your edit"
                )

    def _check_dataset(self) -> None:
        if not Path(self.suite).exists():
            raise ConfigError(f"--suite {self.suite}: expected 'synthetic' or a dataset file or folder")
        if self.images is not None:
            raise ConfigError("--images sizes the synthetic benchmark; a dataset suite has its own")
        picked = set(self.families or ())
        if picked & {"video", "prompts"}:
            raise ConfigError(
                "--methods video and prompts run on the synthetic video and class benchmarks only"
            )
        if "visa" in picked and not self.visa_config:
            raise ConfigError(
                "VISA on a dataset needs --visa-config with real backends: the offline ones read only the "
                "synthetic benchmark's shapes"
            )


def run_suite(
    settings: SuiteSettings, out: str | Path, data_dir: str | Path = "data", progress: bool = True
) -> dict:
    """Run (or continue) the suite in ``out``; returns the summary (also written there)."""
    settings.check()
    if settings.families is None:  # recorded as the families it stands for
        picked = settings.picked_families()
        settings = replace(settings, families=[f for f in FAMILIES if f in picked])
    edits = RecipeEdits(parse_weights(settings.weights), tuple(settings.sets))
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise ConfigError(f"--data-dir {data_dir}: expected a folder, found a file")
    with claimed(out, "vlret bench") as out:  # two runs in one folder would mix their plans and cells
        return _run_claimed(settings, edits, out, Path(data_dir), progress)


def _run_claimed(
    settings: SuiteSettings, edits: RecipeEdits, out: Path, data_dir: Path, progress: bool
) -> dict:
    _check_same_settings(out, settings)
    started = time.perf_counter()
    if settings.synthetic:
        rows, notes = with_rerankers(synthetic_rows(), settings.picked_families()), []
    else:
        rows, data, notes = open_dataset(settings)
    # a recipe edit that no recipe reads is refused before any data is prepared
    trained = [r for r in rows if isinstance(r, TrainRow)]
    edits.check([(r.recipe, r.overrides) for r in trained])
    check_hub_weights([(r.name, r.recipe, r.overrides) for r in trained], edits)
    if settings.synthetic:
        data = prepare_data(rows, data_dir, settings.images, progress)
        fingerprint = _check_same_data(out, data)
    else:
        fingerprint = _check_same_data(out, data)  # before deriving features from data that changed
        add_dataset_features(rows, data, data_dir, progress)
    visa_config = Path(settings.visa_config) if settings.visa_config else None
    ctx = CellContext(out, data, edits=edits, visa_config=visa_config)
    plan = _plan(rows, settings, ctx, started, fingerprint)
    cells = [(row, seed) for row in run_order(rows) for seed in settings.seeds]
    bar = tqdm(cells, desc="bench cells", unit="cell", disable=not progress)
    for row, seed in bar:
        bar.set_postfix_str(f"{row.name} · seed {seed}")
        if ctx.record(row.name, seed) is None:
            run_cell(row, seed, ctx, plan.get(row.name, {}).get("overrides", []))
    summary = summarise(rows, settings.seeds, ctx, settings, plan)
    summary["notes"] = notes
    summary["seconds_this_run"] = round(time.perf_counter() - started, 1)
    write_outputs(summary, out)
    return summary


def prepare_data(rows, data_dir: Path, images: int | None, progress: bool) -> SuiteData:
    """The synthetic benchmark, and the region and teacher features when some row reads them."""
    from vlret.data.synth import SynthConfig, write_benchmark
    from vlret.models.region_features import RegionSettings

    name = "synth" if images is None else f"synth_{images}"
    config = SynthConfig() if images is None else replace(SynthConfig(), images=images)
    dataset_file = write_benchmark(data_dir / name, config)
    data = SuiteData(DataSource(dataset_file, "karpathy"))
    trained = [r for r in rows if isinstance(r, TrainRow)]
    if any(r.data == "precomp" for r in trained):
        regions = RegionSettings(boxes="scene", input_size=REGION_INPUT_SIZE)
        scenes = dataset_file.parent / "scenes.json"
        _add_region_features(data, data_dir / f"{name}_precomp", regions, scenes, progress)
    if any(r.teacher for r in trained):
        data.teacher = _teacher_features(data.load("images"), data_dir / f"{name}_teacher", progress)
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


def open_dataset(settings: SuiteSettings) -> tuple[list, SuiteData, list[str]]:
    """A user's dataset: its rows (what the data can run, of the picked families), the suite's data
    (without derived features yet), and notes on what was left out and why."""
    source = open_source(settings.suite, settings.format, settings.media_root)
    families = settings.picked_families()
    notes = []
    if "visa" not in families and not settings.visa_config:
        notes.append("VISA rows left out: give --visa-config with real backends to run them")
    if source.precomp:
        data = SuiteData(None, precomp=source.path, test_split=settings.test_split)
        data.val_split = validation_split(data.load("precomp"), settings.test_split)
        data.region_count, data.region_dim = region_shape(source.path)
        rows = with_rerankers(dataset_rows(settings.recipes, precomp_only=True), families)
        return rows, data, [*notes, "region features alone: only SGR and SAF rows, nothing to re-rank"]
    data = SuiteData(source, test_split=settings.test_split)
    dataset = data.load("images")
    data.val_split = validation_split(dataset, settings.test_split)
    fit = region_fit(dataset, settings.test_split)
    rows = dataset_rows(settings.recipes, regions=fit.run, rerank_regions=fit.rerank)
    return with_rerankers(rows, families), data, [*notes, *([fit.note] if fit.note else [])]


def add_dataset_features(rows: list, data: SuiteData, data_dir: Path, progress: bool) -> None:
    """Grid-box region features and the teachers' features of a dataset's images, where rows read them;
    cached in ``data_dir`` under a key of the data's content (a killed write resumes)."""
    if data.images is None:
        return  # region features alone: nothing to derive
    dataset = data.load("images")
    key = f"{slug(data.images.path.stem)}-{dataset_fingerprint(dataset)}"
    trained = [r for r in rows if isinstance(r, TrainRow)]
    if any(r.data == "precomp" for r in trained):
        from vlret.models.region_features import RegionSettings

        _add_region_features(data, data_dir / f"{key}_regions", RegionSettings(), None, progress)
    if any(r.teacher for r in trained):
        data.teacher = _teacher_features(dataset, data_dir / f"{key}_teacher", progress)


def _add_region_features(data: SuiteData, out: Path, regions, scenes: Path | None, progress: bool) -> None:
    """Region features of the suite's images in ``out`` (reused when finished, resumed when not), and
    their shape, which the region rows' recipes take."""
    from vlret.models.region_features import write_region_features

    write_region_features(data.load("images"), out, regions, scenes, progress=progress)
    data.precomp = out
    data.region_count, data.region_dim = region_shape(out)


def _teacher_features(dataset, out: Path, progress: bool) -> Path:
    from vlret.train.teacher import TeacherTowers, features_complete, write_teacher_features

    # the manifest says whether a write finished (its arrays exist from the first chunk); one that was
    # killed resumes from its last chunk
    if not features_complete(out):
        write_teacher_features(dataset.split("train"), "train", out, TeacherTowers(), progress=progress)
    return out


def _plan(
    rows, settings: SuiteSettings, ctx: CellContext, started: float, fingerprint: str
) -> dict[str, dict]:
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
    record = {"settings": asdict(settings), "data": fingerprint, "note": note, "rows": rows_plan}
    write_json(path, record)
    return rows_plan


def data_fingerprint(data: SuiteData) -> str:
    """What the suite's cells were computed from: its source data (the images' records, or region features
    alone), the records (ids, paths, splits, captions) and each file's size and modification time (not
    its bytes: a dataset may hold many gigabytes). Features the suite derives are keyed on their own."""
    kind = "images" if data.images is not None else "precomp"
    dataset = data.load(kind)
    if kind == "precomp":
        files = sorted(p for p in Path(data.precomp).iterdir() if p.is_file())
    else:
        files = [dataset.media_root / item.path for item in dataset.items]
    stats = [(str(f), *_size_and_time(f)) for f in files]
    parts = [kind, dataset_fingerprint(dataset), stats]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _size_and_time(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def _check_same_data(out: Path, data: SuiteData) -> str:
    """The data's fingerprint; a suite folder's cells stand for the data they were computed on, so changed
    data is refused."""
    now = data_fingerprint(data)
    path = out / "plan.json"
    before = read_json(path).get("data") if path.is_file() else None  # None also: an older plan
    if before is not None and before != now:
        raise ConfigError(
            f"{out} holds a suite run on other data: the records or files of the data changed since it ran "
            f"(fingerprint {before} then, {now} now); use another --out, or delete {out} to start over"
        )
    return now


def _check_same_settings(out: Path, settings: SuiteSettings) -> None:
    path = out / "plan.json"
    if not path.is_file():
        return
    # settings added since that run was made stand at their defaults there
    before = {**asdict(SuiteSettings()), **read_json(path)["settings"]}
    now = asdict(settings)
    changed = {k: (before[k], v) for k, v in now.items() if before[k] != v}
    if changed:
        details = "; ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in changed.items())
        raise ConfigError(f"{out} holds a suite run with other settings ({details}); use another --out")
