"""A user's dataset as a suite (``vlret bench --suite PATH``): what it is, which rows it can run, and
how the real-data recipes are pointed at it.

- Images with captions (Karpathy JSON, LAVIS folder, CSV, VSE): every text-image row, with the papers'
  real-data recipes (``*_f30k`` or ``*_coco``) where a method has them. SGR and SAF read grid-box region
  features written from the images (the whole image and a 3 x 3 grid, EfficientNet-Lite0 at 224 px), which
  need 5 captions per image; VISA needs real backends (``--visa-config``): the offline ones read only the
  synthetic benchmark's shapes.
- Region features alone (precomp): SGR and SAF (and their ensembles, ± VSL), nothing to re-rank.

The recipes name hub weights (ViT-B/16, Swin-B, BERT-base); :class:`RecipeEdits` maps those ids to local
folders (``--weights``) and sets any other recipe key (``--set``) in every recipe that has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlret.data import RetrievalDataset, load_dataset
from vlret.data.formats import detect_format
from vlret.errors import ConfigError, DataError

#: formats of text-image data; precomp is region features; the video formats have no suite of their own
IMAGE_FORMATS = ("karpathy", "lavis", "csv", "vse")
DATASET_FORMATS = (*IMAGE_FORMATS, "precomp")

#: what region features written from images need, as in the precomp layout
CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class DataSource:
    """Where a suite's annotations are, their format (never ``auto``) and the media folder."""

    path: Path
    format: str
    media_root: Path | None = None

    @property
    def precomp(self) -> bool:
        return self.format == "precomp"

    def load(self) -> RetrievalDataset:
        try:
            return load_dataset(self.path, self.format, self.media_root)
        except DataError as exc:
            if self.format != "csv":
                raise
            # the reader's advice names options of the data commands; vlret bench reads a CSV as it is
            problem = exc.problem.split("; give the file's encoding")[0]
            raise DataError(
                exc.file,
                exc.record,
                f"{problem}; vlret bench reads a CSV as UTF-8 with the columns image, caption and split: "
                f"convert other files first with `vlret data convert {self.path} --encoding ENCODING "
                "--path-column ... --caption-column ... --out data.json`, then run --suite data.json",
            ) from None


def open_source(path: str | Path, format: str = "auto", media_root: str | Path | None = None) -> DataSource:
    """The dataset at ``path``; a format the suite cannot run is refused, naming the ones it can."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in DATASET_FORMATS:
        raise ConfigError(
            f"--suite {path}: {fmt} data has no suite; vlret bench runs text-image data "
            f"({', '.join(DATASET_FORMATS)}) or the synthetic benchmark"
        )
    return DataSource(path, fmt, Path(media_root) if media_root else None)


def validation_split(dataset: RetrievalDataset, test_split: str) -> str:
    """The split that checkpoints are chosen on (``val``, else ``dev``); the train and test splits must
    exist too."""
    splits = dataset.splits
    missing = [s for s in ("train", test_split) if s not in splits]
    val = next((s for s in ("val", "dev") if s in splits), None)
    if missing or val is None:
        needs = ", ".join(repr(s) for s in [*missing, *([] if val else ["val (or dev)"])])
        raise ConfigError(f"{dataset.source}: the suite needs the splits {needs}; the data has {splits}")
    if val == test_split:
        raise ConfigError(f"--test-split {test_split}: checkpoints are chosen on it; test on another split")
    return val


@dataclass(frozen=True)
class RegionFit:
    """Whether region features written from a dataset's images can stand for them.

    ``run``: every image has at least 5 captions (the precomp layout keeps the first 5); ``rerank``: the
    test images have exactly 5, so the region rows rank the same captions as every other row and their
    rankings can be re-ranked."""

    run: bool
    rerank: bool
    note: str | None = None


def region_fit(dataset: RetrievalDataset, test_split: str) -> RegionFit:
    counts = [len(c) for c in dataset.item_to_captions]
    if min(counts, default=0) < CAPTIONS_PER_IMAGE:
        return RegionFit(
            False,
            False,
            f"SGR and SAF rows left out: region features keep {CAPTIONS_PER_IMAGE} captions per image and "
            f"some images have {min(counts)}",
        )
    test = dataset.split(test_split)
    if any(len(c) != CAPTIONS_PER_IMAGE for c in test.item_to_captions):
        return RegionFit(
            True,
            False,
            f"SGR and SAF rows rank the first {CAPTIONS_PER_IMAGE} captions of each test image (other rows "
            "rank them all), so they have no re-ranking rows",
        )
    return RegionFit(True, True)


def region_shape(folder: Path, split: str = "train") -> tuple[int, int]:
    """Regions per image and feature width of a precomp folder's ``split``."""
    from vlret.data.regions import open_region_file

    array = open_region_file(folder / f"{split}_ims.npy")
    return int(array.shape[1]), int(array.shape[2])


@dataclass(frozen=True)
class RecipeEdits:
    """Edits to every recipe of a suite: hub ids mapped to local folders (``weights``), and ``KEY=VALUE``
    assignments (``sets``) applied to each recipe that has ``KEY``."""

    weights: dict[str, str] = field(default_factory=dict)
    sets: tuple[str, ...] = ()

    def overrides(self, recipe: str, row_overrides: tuple[str, ...] = ()) -> list[str]:
        """The overrides for ``recipe`` (a built-in name) as a row changes it."""
        data = _recipe_data(recipe, row_overrides)
        edits = [f"{key}={self.weights[value]}" for key, value in _sources(data) if value in self.weights]
        return edits + [s for s in self.sets if _has_key(data, s.split("=", 1)[0])]

    def check(self, recipes: list[tuple[str, tuple[str, ...]]]) -> None:
        """Each weight id and key must be used by some recipe of the suite (a typo would do nothing)."""
        for s in self.sets:
            if "=" not in s:
                raise ConfigError(f"--set {s!r}: expected KEY=VALUE")
        datas = [_recipe_data(r, o) for r, o in recipes]
        used = {value for d in datas for _, value in _sources(d)}
        for hub_id in self.weights:
            if hub_id not in used:
                raise ConfigError(
                    f"--weights {hub_id}: no recipe of this suite reads it; they read {sorted(used)}"
                )
        for s in self.sets:
            key = s.split("=", 1)[0]
            if not any(_has_key(d, key) for d in datas):
                raise ConfigError(f"--set {s}: no recipe of this suite has the key {key!r}")
        self._check_values(recipes)

    def _check_values(self, recipes: list[tuple[str, tuple[str, ...]]]) -> None:
        """Every edited recipe must still be valid, checked now rather than when its cell starts (after the
        data is prepared)."""
        from vlret.train.recipe import builtin_recipe, load_recipe

        for recipe, row_overrides in recipes:
            edits = self.overrides(recipe, row_overrides)
            if not edits:
                continue
            name = str(_recipe_data(recipe, row_overrides).get("model", {}).get("name", ""))
            if "/" in name and ":" not in name and not Path(name).exists():
                # it starts from an earlier row's checkpoint, made later: check the rest of the recipe
                edits = [f"model.name=hf:{name}", *edits]
            try:
                load_recipe(builtin_recipe(recipe), [*row_overrides, *edits])
            except ConfigError as exc:
                raise ConfigError(
                    f"--set / --weights: the edited recipe {recipe} is invalid: {exc}"
                ) from None


def check_hub_weights(rows: list[tuple[str, str, tuple[str, ...]]], edits: RecipeEdits) -> None:
    """Every hub id that a row's recipe still reads after ``edits`` must load (from the cache or the
    hub), checked before any work: a missing one would otherwise stop the suite at that row.
    ``rows``: (row name, recipe, the row's overrides)."""
    checked: set[str] = set()
    for name, recipe, overrides in rows:
        data = _recipe_data(recipe, (*overrides, *edits.overrides(recipe, overrides)))
        for key, source in _sources(data):
            if source in checked or Path(source).is_dir():
                continue
            try:
                _load_hub_config(source)
            except OSError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"row {name!r}: recipe {recipe} reads {source!r} ({key}), which cannot be loaded "
                    f"({reason}); download it, or give --weights {source}=FOLDER"
                ) from None
            checked.add(source)


def _load_hub_config(source: str) -> None:
    from transformers import AutoConfig

    AutoConfig.from_pretrained(source)


def parse_weights(pairs: list[str]) -> dict[str, str]:
    """``HUB_ID=FOLDER`` pairs as a mapping; each folder must hold a model transformers can load."""
    weights = {}
    for pair in pairs:
        hub_id, sep, folder = pair.partition("=")
        if not sep or not hub_id or not folder:
            raise ConfigError(f"--weights {pair!r}: expected HUB_ID=FOLDER")
        if not Path(folder).is_dir():
            raise ConfigError(f"--weights {pair}: {folder} is not a folder")
        try:  # what a hub download holds: a config transformers can read
            _load_hub_config(folder)
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"--weights {pair}: {folder} holds no model transformers can load ({reason}); give the folder "
                "a hub download or save_pretrained wrote"
            ) from None
        weights[hub_id] = str(Path(folder).resolve())
    return weights


def _recipe_data(recipe: str, row_overrides: tuple[str, ...]) -> dict:
    from vlret.schema import read_yaml
    from vlret.train.recipe import apply_override, builtin_recipe

    data = read_yaml(builtin_recipe(recipe), "recipe")
    for assignment in row_overrides:
        apply_override(data, assignment)
    return data


def _sources(data: dict) -> list[tuple[str, str]]:
    """``(dotted key, value)`` of every ``source`` under ``model.options`` (the towers' weights)."""
    found: list[tuple[str, str]] = []

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}.{key}")
            elif key == "source" and isinstance(value, str):
                found.append((f"{prefix}.{key}", value))

    options = (data.get("model") or {}).get("options")
    if isinstance(options, dict):
        walk(options, "model.options")
    return found


def _has_key(data: dict, dotted: str) -> bool:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
