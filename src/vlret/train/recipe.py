"""Training recipes: YAML files validated into dataclasses, with ``key=value`` overrides.

Every key is checked: an unknown key is an error that lists the valid keys of its section, and a value of the
wrong type names the key and the type expected. Overrides use dotted paths (``train.epochs=3``,
``losses.hinge.margin=0.1``) and YAML syntax for values (``optim.betas=[0.9,0.98]``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlret.errors import ConfigError
from vlret.losses import LOSSES
from vlret.schema import build_dataclass, read_yaml

NO_VALIDATION = "none"  # data.val_split for data without a validation split


@dataclass
class ModelSection:
    name: str = (
        "tiny-cnn"  # tiny-cnn, tiny-vit, composed, hf:<id or folder>, openclip:<arch>/<tag>, or a folder
    )
    options: dict = field(default_factory=dict)  # TinyConfig overrides for tiny models
    # similarity head {name: ..., options...}; None: the model's own (cosine for a fresh model)
    head: dict | None = None
    # clips instead of images: VideoConfig's settings {frames, pooling: mean|transformer, layers, heads}
    video: dict | None = None


@dataclass
class DataSection:
    path: str = ""
    format: str = "auto"
    media_root: str | None = None
    train_split: str = "train"
    # checkpoints are chosen here, never on test; "none": no validation, the latest checkpoint is kept as best
    # (MSR-VTT's 9k / 1k-A split has no validation videos)
    val_split: str = "val"
    cache_images: bool = True  # keep decoded training images in memory (small datasets)
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random-resized-crop area range
    hflip: bool = False  # off by default: captions say "left" and "right"
    # processes that read and augment batches: "auto" is none (a prefetch thread) when the images are cached
    # or the model trains on the CPU, and half the cores, 1 to 8, on an accelerator decoding every step
    num_workers: int | str = "auto"
    # epoch: every pair once per epoch, shuffled; resampled: an epoch's pairs drawn with replacement
    # (open_clip's --dataset-resampled, for webdataset shards too large to go through evenly)
    sampling: str = "epoch"


@dataclass
class OptimSection:
    # adamw (torch's), or bertadam (CLIP4Clip's released optimiser: no bias correction, the gradient clipped
    # per tensor to clip_grad_norm inside the step, decay by parameter name; vlret.train.bertadam)
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    backbone_lr_factor: float = 1.0  # pretrained towers train at lr * factor (the seeds use 0.1)
    clip_grad_norm: float | None = 2.0
    # fp16 only: clip the still-scaled gradients, as AVSE's released code does (its true norm becomes
    # clip / scale); off: unscale, then clip the true gradients (standard AMP)
    compat_amp_clip: bool = False


@dataclass
class ScheduleSection:
    # cosine, linear, step, constant; warmup_cosine_clip4clip: CLIP4Clip's (a cosine over the whole run,
    # linear warm-up below warmup_fraction of it: the rate jumps where the warm-up ends)
    name: str = "cosine"
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
class TeacherSection:
    """Frozen teachers for distillation losses (RVLR); read only when a loss term needs them."""

    cache: str | None = None  # a folder of per-pair features (vlret features teacher); else the towers run
    image_tower: str = "efficientnet-lite0"
    text_tower: str = "minilm"
    image_options: dict = field(default_factory=dict)
    text_options: dict = field(default_factory=dict)
    batch_size: int = 64


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    losses: dict[str, dict] = field(default_factory=lambda: {"infonce": {"weight": 1.0}})
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    output_dir: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----- validation ---------------------------------------------------------------------------------------

# Metrics a checkpoint can be chosen by: higher is better (median and mean rank are not offered).
SELECTION_METRICS = ("rsum", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")
# Keys that may change between a run and its resumption: they change nothing the run computes.
RESUME_SAFE_KEYS = (
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "data.num_workers",
    "eval.batch_size",
    "output_dir",  # the recipe is read from the folder itself: a run folder that was moved is the same run
)
RECIPE_FILE = "recipe.json"
#: the most loader processes a recipe may ask for (each is a copy of the training process)
MAX_LOADER_WORKERS = 64


def _require(ok: bool, key: str, expected: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


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
        options = dict(options)
        weight = options.pop("weight", 1.0)
        _require(
            isinstance(weight, int | float)
            and not isinstance(weight, bool)
            and math.isfinite(weight)
            and weight >= 0,
            f"losses.{name}.weight",
            "a finite number >= 0",
            weight,
        )
        try:  # types from the loss's dataclass fields, values from its own checks
            build_dataclass(LOSSES[name], options, f"losses.{name}")
        except ValueError as exc:
            raise ConfigError(f"losses.{name}: {exc}") from None
    if all(options.get("weight", 1.0) == 0 for options in losses.values()):
        raise ConfigError("losses: every term has weight 0; at least one must count")


def _check_model(model: ModelSection) -> None:
    from vlret.models.files import MODEL_CONFIG_FILE
    from vlret.models.heads import build_head
    from vlret.models.tiny import TINY_ARCHS, TinyConfig

    try:
        if model.head is not None:
            build_head(model.head)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"model.head: {exc}") from None
    if model.video is not None:
        from vlret.models.video import VideoConfig

        build_dataclass(VideoConfig, dict(model.video), "model.video")
    name = model.name
    if name in TINY_ARCHS:
        options = dict(model.options)
        for reserved in ("arch", "vocab_size"):
            if reserved in options:
                raise ConfigError(f"model.options.{reserved}: set by vlret, not by the recipe")
        try:
            build_dataclass(TinyConfig, {"arch": name, **options}, "model.options")
        except ValueError as exc:
            raise ConfigError(f"model.options: {exc}") from None
        return
    if name == "composed":
        from vlret.models.composed import ComposedConfig

        try:
            config = build_dataclass(ComposedConfig, dict(model.options), "model.options")
        except ValueError as exc:
            raise ConfigError(f"model.options: {exc}") from None
        _check_head_width(model.head, config.embed_dim)
        return
    if not (name.startswith(("hf:", "openclip:")) or (Path(name) / MODEL_CONFIG_FILE).is_file()):
        raise ConfigError(
            f"model.name: expected tiny-cnn, tiny-vit, composed, hf:<hub id or folder>, openclip:<arch>/<tag> or a saved vlret model folder, got {name!r}"
        )
    if model.options:
        raise ConfigError(f"model.options: only the tiny and composed models take options; {name} takes none")


def _check_head_width(head: str | dict | None, embed_dim: int) -> None:
    """A composed model's tokens and embeddings are ``embed_dim`` wide: the head's sizes must fit them."""
    if not isinstance(head, dict):
        return
    if head.get("name") in ("sgr", "saf") and head.get("embed_dim", 1024) != embed_dim:
        raise ConfigError(
            f"model.head.embed_dim: {head.get('embed_dim', 1024)}, but the model's tokens are "
            f"model.options.embed_dim = {embed_dim} wide"
        )
    if head.get("name") == "aeom":
        sizes = head.get("chunk_sizes", [256])
        for size in [sizes] if isinstance(sizes, int) else sizes:
            if embed_dim % size:
                raise ConfigError(
                    f"model.head.chunk_sizes: {size} does not divide model.options.embed_dim = {embed_dim}"
                )


def _check_data(data: DataSection) -> None:
    from vlret.data.formats import FORMATS

    _require(
        data.format == "auto" or data.format in FORMATS,
        "data.format",
        f"auto or one of {', '.join(FORMATS)}",
        data.format,
    )
    lo_hi = data.crop_scale
    _require(
        len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1,
        "data.crop_scale",
        "[low, high] with 0 < low <= high <= 1",
        lo_hi,
    )
    _require(
        data.num_workers == "auto"
        or (isinstance(data.num_workers, int) and 0 <= data.num_workers <= MAX_LOADER_WORKERS),
        "data.num_workers",
        f"auto or an integer from 0 to {MAX_LOADER_WORKERS}",
        data.num_workers,
    )
    _require(data.sampling in ("epoch", "resampled"), "data.sampling", "epoch or resampled", data.sampling)
    for key in ("train_split", "val_split"):
        _require(bool(getattr(data, key)), f"data.{key}", "a split name", getattr(data, key))
    if data.val_split == "test":
        raise ConfigError(
            "data.val_split: checkpoints are never chosen on the test split; use a validation split"
        )


def _check_optim(opt: OptimSection) -> None:
    _require(opt.name in ("adamw", "bertadam"), "optim.name", "adamw or bertadam", opt.name)
    for key in ("lr", "weight_decay", "backbone_lr_factor"):
        value = getattr(opt, key)
        _require(math.isfinite(value) and value >= 0, f"optim.{key}", "a finite number >= 0", value)
    _require(
        len(opt.betas) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in opt.betas),
        "optim.betas",
        "two numbers in [0, 1)",
        opt.betas,
    )
    _require(math.isfinite(opt.eps) and opt.eps > 0, "optim.eps", "a finite number > 0", opt.eps)
    clip = opt.clip_grad_norm
    _require(
        clip is None or (math.isfinite(clip) and clip > 0),
        "optim.clip_grad_norm",
        "null or a number > 0",
        clip,
    )


def _check_schedule(sched: ScheduleSection) -> None:
    _require(
        sched.name in ("cosine", "linear", "step", "constant", "warmup_cosine_clip4clip"),
        "schedule.name",
        "cosine, linear, step, constant or warmup_cosine_clip4clip",
        sched.name,
    )
    _require(sched.warmup_steps >= 0, "schedule.warmup_steps", "an integer >= 0", sched.warmup_steps)
    _require(
        math.isfinite(sched.warmup_fraction) and 0 <= sched.warmup_fraction < 1,
        "schedule.warmup_fraction",
        "a number in [0, 1)",
        sched.warmup_fraction,
    )
    _require(
        math.isfinite(sched.min_lr_ratio) and 0 <= sched.min_lr_ratio <= 1,
        "schedule.min_lr_ratio",
        "a number in [0, 1]",
        sched.min_lr_ratio,
    )
    _require(all(e >= 1 for e in sched.step_epochs), "schedule.step_epochs", "epochs >= 1", sched.step_epochs)
    _require(
        math.isfinite(sched.gamma) and sched.gamma > 0, "schedule.gamma", "a finite number > 0", sched.gamma
    )


def _check_train(train: TrainSection) -> None:
    for key in ("epochs", "batch_size", "grad_accum_steps", "log_every_steps"):
        _require(getattr(train, key) >= 1, f"train.{key}", "an integer >= 1", getattr(train, key))
    for key in ("max_steps", "checkpoint_every_steps"):
        value = getattr(train, key)
        _require(value is None or value >= 1, f"train.{key}", "null or an integer >= 1", value)
    _require(train.seed >= 0, "train.seed", "an integer >= 0", train.seed)
    _require(train.amp in ("auto", "off", "bf16", "fp16"), "train.amp", "auto, off, bf16 or fp16", train.amp)
    _check_device(train.device)


def _check_device(device: str) -> None:
    import torch

    if device in ("auto", "cpu"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    _require(
        parsed is not None and parsed.type == "cuda", "train.device", "auto, cpu, cuda or cuda:N", device
    )
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device} was asked for, but this machine has no usable CUDA GPU")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {device}, but there are {torch.cuda.device_count()} GPUs")


def _check_eval(ev: EvalSection) -> None:
    from vlret.evaluate.protocols import PROTOCOLS

    _require(ev.protocol in PROTOCOLS, "eval.protocol", f"one of {', '.join(PROTOCOLS)}", ev.protocol)
    _require(
        ev.metric in SELECTION_METRICS, "eval.metric", f"one of {', '.join(SELECTION_METRICS)}", ev.metric
    )
    _require(ev.every_epochs >= 1, "eval.every_epochs", "an integer >= 1", ev.every_epochs)
    _require(ev.batch_size >= 1, "eval.batch_size", "an integer >= 1", ev.batch_size)


def _check_values(recipe: Recipe) -> None:
    _check_model(recipe.model)
    _check_data(recipe.data)
    _check_losses(recipe.losses)
    _check_optim(recipe.optim)
    _check_schedule(recipe.schedule)
    _check_train(recipe.train)
    _check_eval(recipe.eval)
    _require(bool(recipe.output_dir), "output_dir", "a folder", recipe.output_dir)


# ----- runs on disk -------------------------------------------------------------------------------------


def save_recipe(out: Path, recipe: Recipe) -> None:
    """Record the recipe a run was started with (``resume`` compares against it)."""
    from vlret.data._io import write_json

    write_json(Path(out) / RECIPE_FILE, recipe.to_dict())


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, mapping by mapping."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def recipe_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every key that differs (and is not in :data:`RESUME_SAFE_KEYS`)."""
    # A key added to recipes after the run was saved held its default in that run.
    defaults = Recipe().to_dict()
    defaults.pop("losses")  # a run's loss terms are all in its saved recipe
    old, new = _flatten(_merged(defaults, saved)), _flatten(current)
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k) and k not in RESUME_SAFE_KEYS
    ]


def check_resumable(out: Path, recipe: Recipe, allow_changes: bool = False) -> None:
    """Refuse to resume a run with a recipe that differs from the one it was started with."""
    import json

    path = Path(out) / RECIPE_FILE
    if not path.is_file():
        return  # a run from before recipes were recorded
    differences = recipe_differences(json.loads(path.read_text()), recipe.to_dict())
    if differences and not allow_changes:
        raise ConfigError(
            f"{out}: the recipe differs from the one this run was started with ({path}):\n  "
            + "\n  ".join(differences)
            + "\nresume with the same recipe, train into a new output_dir, pass --resume-anyway (vlret train) "
            "to resume with this recipe, or --overwrite to delete this run and start afresh"
        )


def check_writable(out: Path) -> None:
    """The output folder exists (or can be made) and takes a file."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write to {out} ({exc.strerror or exc})") from None


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    """Validate a (parsed) recipe mapping."""
    try:
        recipe = build_dataclass(Recipe, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        _check_values(recipe)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return recipe


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    set_value(data, key.strip(), yaml.safe_load(raw), f"override {assignment!r}")


def set_value(data: dict, dotted_key: str, value, where: str = "") -> None:
    """Set ``data[a][b]... = value`` for ``dotted_key`` ``a.b...`` in place, creating sections as needed."""
    node = data
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where or dotted_key}: {part!r} is not a section")
    node[parts[-1]] = value


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
        if "method" in data and not isinstance(data.get("model", {}), dict):
            raise ConfigError(
                f"{path} is a prompt-learning recipe: run it with `vlret prompts train --recipe {path.stem}`"
            )
    source = str(path or "recipe")
    file_alone = copy.deepcopy(data)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return recipe_from_dict(data, source)
    except ConfigError as exc:
        raise ConfigError(_blame(str(exc), source, file_alone, overrides)) from None


def _blame(message: str, source: str, file_alone: dict, overrides: list[str]) -> str:
    """The error of a recipe with overrides, naming where the bad value came from: the file, when the file
    alone fails the same way, else the command line's overrides."""
    if not overrides:
        return message
    problem = message.removeprefix(f"{source}: ")
    try:
        recipe_from_dict(copy.deepcopy(file_alone), source)
    except ConfigError as alone:
        if str(alone).removeprefix(f"{source}: ") == problem:
            return message
    return f"the command line ({' '.join(overrides)}): {problem}"
