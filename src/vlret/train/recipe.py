"""Training recipes: YAML files validated into dataclasses, with ``key=value`` overrides.

Every key is checked: an unknown key is an error that lists the valid keys of its section, and a value of the
wrong type names the key and the type expected. Overrides use dotted paths (``train.epochs=3``,
``losses.hinge.margin=0.1``) and YAML syntax for values (``optim.betas=[0.9,0.98]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlret.errors import ConfigError
from vlret.losses import LOSSES
from vlret.schema import build_dataclass, read_yaml


@dataclass
class ModelSection:
    name: str = "tiny-cnn"  # tiny-cnn, tiny-vit, hf:<id or folder>, or a saved model folder
    options: dict = field(default_factory=dict)  # TinyConfig overrides for tiny models


@dataclass
class DataSection:
    path: str = ""
    format: str = "auto"
    media_root: str | None = None
    train_split: str = "train"
    val_split: str = "val"  # checkpoints are chosen here, never on test
    cache_images: bool = True  # keep decoded training images in memory (small datasets)
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random-resized-crop area range
    hflip: bool = False  # off by default: captions say "left" and "right"
    num_workers: int = 0


@dataclass
class OptimSection:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    backbone_lr_factor: float = 1.0  # pretrained towers train at lr * factor (the seeds use 0.1)
    clip_grad_norm: float | None = 2.0


@dataclass
class ScheduleSection:
    name: str = "cosine"  # cosine, step, constant
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # of all steps; used when warmup_steps is 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak
    step_epochs: list[int] = field(default_factory=list)  # step: multiply by gamma at these epochs
    gamma: float = 0.1


@dataclass
class TrainSection:
    epochs: int = 10
    batch_size: int = 128  # global batch, split across processes
    grad_accum_steps: int = 1
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU), off, bf16, fp16
    seed: int = 0
    max_steps: int | None = None  # stop early (tests, smoke runs)
    log_every_steps: int = 10
    checkpoint_every_steps: int | None = None  # besides every epoch end
    device: str = "auto"  # auto, cpu, cuda


@dataclass
class EvalSection:
    protocol: str = "generic"
    every_epochs: int = 1
    metric: str = "rsum"  # key of the result metrics used to pick the best checkpoint
    batch_size: int = 128


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    losses: dict[str, dict] = field(default_factory=lambda: {"infonce": {"weight": 1.0}})
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----- validation ---------------------------------------------------------------------------------------


def _check_losses(losses: dict) -> None:
    if not losses:
        raise ConfigError("losses: at least one loss term is needed")
    for name, options in losses.items():
        if name not in LOSSES:
            raise ConfigError(f"losses: unknown loss {name!r}; valid: {', '.join(LOSSES)}")
        if not isinstance(options, dict):
            raise ConfigError(f"losses.{name}: expected a mapping with 'weight' and the loss's options")
        valid = ["weight"] + [f.name for f in dataclasses.fields(LOSSES[name])]
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ConfigError(f"losses.{name}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")


def _check_values(recipe: Recipe) -> None:
    from vlret.evaluate.protocols import PROTOCOLS

    if recipe.schedule.name not in ("cosine", "step", "constant"):
        raise ConfigError(f"schedule.name: expected cosine, step or constant, not {recipe.schedule.name!r}")
    if recipe.train.amp not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"train.amp: expected auto, off, bf16 or fp16, not {recipe.train.amp!r}")
    if recipe.eval.protocol not in PROTOCOLS:
        raise ConfigError(
            f"eval.protocol: expected one of {', '.join(PROTOCOLS)}, not {recipe.eval.protocol!r}"
        )
    for key in ("epochs", "batch_size", "grad_accum_steps"):
        if getattr(recipe.train, key) < 1:
            raise ConfigError(f"train.{key}: must be at least 1")
    if recipe.data.val_split == "test":
        raise ConfigError(
            "data.val_split: checkpoints are never chosen on the test split; use a validation split"
        )


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    """Validate a (parsed) recipe mapping."""
    try:
        recipe = build_dataclass(Recipe, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        _check_losses(recipe.losses)
        _check_values(recipe)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return recipe


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def builtin_recipe(name: str) -> Path:
    """The path of a recipe shipped with vlret (``src/vlret/configs/NAME.yaml``)."""
    folder = Path(__file__).resolve().parent.parent / "configs"
    path = folder / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"no recipe file {name!r} and no built-in recipe of that name; built-in: {known}")
    return path


def resolve_recipe(name: str | Path) -> Path:
    """A recipe file path as given, or the built-in recipe of that name."""
    path = Path(name)
    return path if path.is_file() else builtin_recipe(str(name))


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        path = resolve_recipe(path)
        data = read_yaml(path, "recipe")
    for assignment in overrides:
        apply_override(data, assignment)
    return recipe_from_dict(data, str(path or "recipe"))
