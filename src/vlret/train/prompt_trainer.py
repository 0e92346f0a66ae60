"""Training and evaluating learnt prompts (CoOp, CoOp + TextRefiner) on class data, base-to-new.

Few-shot training data (``shots`` per class from train, 4 per class from val, seeded) of the ``base`` half of
the classes (or ``all``); SGD at 0.002 with momentum 0.9 and weight decay 5e-4, the first epoch at a constant
1e-5, then cosine annealing stepped per epoch; batch 32; training images random-resized-cropped (area 0.08-1,
aspect 3/4-4/3) and flipped; the checkpoint is chosen on val accuracy (the released ``best_val``; ``select:
last`` keeps the final epoch, as the cross-dataset protocol does). Every epoch ends with an atomic checkpoint
(learnt weights, cache, optimiser, scheduler, generator), so a killed run resumes; a run's settings are kept
in ``run.json`` and a resumption with other settings is refused.

Runs are described by recipes (``src/vlret/configs/coop_*.yaml``, ``textrefiner_*.yaml``): YAML mappings of
:class:`PromptRun`'s fields, read by :func:`load_prompt_recipe` with ``key=value`` overrides.

The saved prompts (``prompts.safetensors`` + ``prompts.json``) hold the context vectors, ``W``, the cache and
the frozen model's folder; the alignment MLP is training-only and not kept.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlret.data._io import read_json
from vlret.data.classes import ClassData, base_new, few_shot_data, harmonic_mean
from vlret.data.image_files import load_image
from vlret.devices import DEVICE_CHOICES, pick_device
from vlret.errors import ConfigError, TrainingError
from vlret.evaluate.classification import class_retrieval_map, top1_accuracy
from vlret.losses.textrefiner import prompt_losses
from vlret.models import create_model
from vlret.models.coop import CONTEXT_MODES
from vlret.models.prompt_classifier import PromptClassifier, RefinerConfig
from vlret.models.registry import canonical_model_name
from vlret.schema import build_dataclass, read_yaml
from vlret.train.data import Augment

PROMPTS_FILE, PROMPTS_META = "prompts.safetensors", "prompts.json"
METHODS = ("coop", "textrefiner")


@dataclass
class PromptRun:
    """One prompt-learning run (what ``vlret prompts train`` takes)."""

    model: str = ""  # a saved vlret model folder (or hf: CLIP) whose text tower takes input embeddings
    data: str = ""  # a split_zhou_<Name>.json or a folder of class folders (read by the CLI)
    images: str | None = None  # the folder a split file's paths are relative to (default: images/ beside it)
    classnames: str | None = None  # classnames.txt for class folders named by id (ImageNet)
    method: str = "textrefiner"  # or coop
    subset: str = "base"  # base (base-to-new), or all (cross-dataset)
    shots: int = 16
    seed: int = 1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    init: str = "a photo of a"
    context: str = "per_word"  # CoOp's one learnt vector per word of init; or per_token
    device: str = "auto"  # auto (the GPU when one is visible), cpu or cuda
    select: str = "best_val"  # or last
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized crop, area range
    # the crop's width / height range; None keeps the image's aspect ratio
    aspect: list[float] | None = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    refiner: RefinerConfig = field(default_factory=RefinerConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model: name the frozen dual encoder (a saved vlret model folder or hf:<CLIP>)")
        if self.subset not in ("base", "all"):
            raise ConfigError(f"subset must be base or all, not {self.subset!r}")
        for key in ("crop_scale", "aspect") if self.aspect is not None else ("crop_scale",):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi or (key == "crop_scale" and hi > 1):
                raise ConfigError(f"{key}: expected [low, high] with 0 < low <= high, got {[lo, hi]}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICE_CHOICES)}, not {self.device!r}")
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"context must be one of {', '.join(CONTEXT_MODES)}, not {self.context!r}")
        if self.select not in ("best_val", "last"):
            raise ConfigError(f"select must be best_val or last, not {self.select!r}")
        self._check_numbers()
        if self.method == "coop":
            self.refiner = RefinerConfig(alpha=0.0)

    def _check_numbers(self) -> None:
        """Counts >= 1 and finite rates: a NaN learning rate would train (and save) an all-NaN context."""
        for key in ("shots", "epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: expected a whole number >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: expected a whole number >= 0, got {self.seed!r}")
        r = self.refiner
        checks = {
            "lr": (self.lr, self.lr > 0, "> 0"),
            "refiner.alpha": (r.alpha, r.alpha >= 0, ">= 0"),
            "refiner.momentum": (r.momentum, 0 <= r.momentum <= 1, "in [0, 1]"),
            "refiner.semantic_divisor": (r.semantic_divisor, r.semantic_divisor > 0, "> 0"),
            "refiner.regulariser_weight": (r.regulariser_weight, r.regulariser_weight >= 0, ">= 0"),
        }
        for key, (value, ok, expected) in checks.items():
            if not (math.isfinite(value) and ok):
                raise ConfigError(f"{key}: expected a finite number {expected}, got {value!r}")
        if isinstance(r.cache_size, bool) or not isinstance(r.cache_size, int) or r.cache_size < 1:
            raise ConfigError(f"refiner.cache_size: expected a whole number >= 1, got {r.cache_size!r}")


def load_prompt_recipe(
    name: str | Path, overrides: list[str] = (), settings: dict | None = None
) -> PromptRun:
    """A :class:`PromptRun` from a recipe file (or a built-in recipe's name), then ``key=value`` overrides
    (values read as YAML), then ``settings`` (dotted keys to values, taken as they are)."""
    from vlret.train.recipe import apply_override, resolve_recipe, set_value

    path = resolve_recipe(name)
    data = read_yaml(path, "recipe")
    for assignment in overrides:
        apply_override(data, assignment)
    for key, value in (settings or {}).items():
        set_value(data, key, value)
    try:
        return build_dataclass(PromptRun, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _pixels(
    classifier: PromptClassifier, data: ClassData, images, augment: Augment | None = None, seeds=()
) -> torch.Tensor:
    """The model's pixels for ``images``; with ``augment``, each image is augmented by a generator seeded
    from its entry of ``seeds`` (so that a resumed run draws the same crops)."""
    transform = classifier.model.image_transform
    pixels = []
    for n, image in enumerate(images):
        picture = load_image(data.path(image), image.path)
        if augment is not None:
            picture = augment(picture, np.random.default_rng(seeds[n]))
        pixels.append(transform(picture))
    return torch.from_numpy(np.stack(pixels)).to(classifier.prompts.ctx.device)


@torch.no_grad()
def split_logits(
    classifier: PromptClassifier, data: ClassData, split: str, batch_size: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's logits ``[images, classes]`` on ``data``'s ``split`` (its classes must be the
    classifier's) and the images' labels."""
    classifier.eval()
    images = data.split(split)
    rows = [
        classifier.logits(_pixels(classifier, data, images[start : start + batch_size])).float().cpu().numpy()
        for start in range(0, len(images), batch_size)
    ]
    logits = np.concatenate(rows) if rows else np.zeros((0, len(data.classnames)), np.float32)
    return logits, np.array([i.label for i in images], dtype=np.int64)


def accuracy(classifier: PromptClassifier, data: ClassData, split: str, batch_size: int = 100) -> float:
    """Top-1 accuracy (%) of ``classifier`` on ``data``'s ``split`` (its classes must be the classifier's)."""
    return top1_accuracy(*split_logits(classifier, data, split, batch_size))


def _lr_factor(epoch: int, epochs: int, lr: float) -> float:
    """Dassl's schedule: epoch 0 at a constant 1e-5, then cosine over the epochs (stepped per epoch)."""
    if epoch == 0:
        return 1e-5 / lr
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _trainable(classifier: PromptClassifier) -> list[torch.nn.Parameter]:
    return [p for n, p in classifier.named_parameters() if not n.startswith("model.") and p.requires_grad]


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_prompts(classifier: PromptClassifier, run: PromptRun, folder: Path) -> None:
    """The learnt prompts (context, ``W``, cache) and what rebuilds them."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {"ctx": classifier.prompts.ctx.detach().cpu().contiguous()}
    if classifier.refines:
        state["cache"] = classifier.cache.entries.detach().cpu().contiguous()
        state["aggregation"] = classifier.aggregation.proj.weight.detach().cpu().contiguous()
    save_file(state, folder / PROMPTS_FILE)
    meta = {
        "model": canonical_model_name(run.model),
        "init": run.init,
        "context": run.context,
        "refiner": asdict(classifier.refiner),
        "classnames": classifier.prompts.classnames,
        "method": run.method,
    }
    (folder / PROMPTS_META).write_text(json.dumps(meta, indent=2) + "\n")


def prompts_meta(folder: str | Path) -> dict:
    """What :func:`save_prompts` wrote beside the weights: the frozen model, classes, settings."""
    path = Path(folder) / PROMPTS_META
    if not path.is_file():
        raise ConfigError(f"{folder}: not a prompts folder (no {PROMPTS_META}); pass RUN/prompts")
    meta = read_json(path)  # a syntax error names the line and column
    missing = (
        [k for k in ("model", "classnames", "init", "refiner") if k not in meta]
        if isinstance(meta, dict)
        else ["all"]
    )
    if missing:
        raise ConfigError(f"{path}: not what vlret prompts train writes (missing: {', '.join(missing)})")
    return meta


def _read_prompt_tensors(path: Path, classifier: PromptClassifier) -> dict[str, torch.Tensor]:
    """The saved tensors, each of the shape this classifier (its model and settings) has, or a
    ConfigError naming the file and what differs."""
    try:
        state = load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise ConfigError(f"{path}: not a readable safetensors file ({str(exc)[:160]})") from None
    expected = {"ctx": classifier.prompts.ctx}
    if classifier.refines:
        expected |= {"cache": classifier.cache.entries, "aggregation": classifier.aggregation.proj.weight}
    for name, like in expected.items():
        if name not in state:
            raise ConfigError(f"{path}: no tensor {name!r}; these prompts were not saved by this vlret")
        if tuple(state[name].shape) != tuple(like.shape):
            raise ConfigError(
                f"{path}: {name} is {tuple(state[name].shape)}, and the model {tuple(like.shape)}: the prompts "
                "were learnt on another model (or other settings)"
            )
    return state


def load_prompts(folder: str | Path, model=None) -> PromptClassifier:
    """A classifier from :func:`save_prompts`' folder (the alignment MLP, training-only, is not restored);
    ``model``, when given, is the frozen model already loaded (it must be the one the prompts were
    trained on)."""
    folder = Path(folder)
    meta = prompts_meta(folder)
    classifier = PromptClassifier(
        model if model is not None else create_model(meta["model"]),
        meta["classnames"],
        meta["init"],
        RefinerConfig(**meta["refiner"]),
        meta.get("context", "per_token"),  # prompts saved before the option learnt one vector per token
    )
    state = _read_prompt_tensors(folder / PROMPTS_FILE, classifier)
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ConfigError(
                f"{folder / PROMPTS_FILE}: {name} holds NaN or infinity; these prompts cannot classify "
                "(retrain them with a lower learning rate)"
            )
    with torch.no_grad():
        classifier.prompts.ctx.copy_(state["ctx"])
        if classifier.refines:
            classifier.cache.entries = state["cache"].clone()
            classifier.aggregation.proj.weight.copy_(state["aggregation"])
    return classifier.eval()


def train_prompts(
    run: PromptRun, data: ClassData, out: str | Path, progress: bool = False, stop_after: int | None = None
) -> dict:
    """Train prompts on ``data``'s ``run.subset`` classes; returns a summary and writes ``out/prompts``.
    A run whose ``out`` holds a checkpoint resumes from it; ``stop_after`` ends after that many epochs (as
    a kill would)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, run)
    torch.manual_seed(run.seed)
    train_data = few_shot_data(base_new(data, run.subset), run.shots, run.seed)
    classifier = PromptClassifier(
        create_model(run.model), train_data.classnames, run.init, run.refiner, run.context
    ).to(pick_device(run.device))
    device = classifier.prompts.ctx.device
    params = _trainable(classifier)
    optimizer = torch.optim.SGD(params, lr=run.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _lr_factor(e, run.epochs, run.lr))
    state_file, start, best = out / "checkpoint.pt", 0, None
    if state_file.is_file():  # resume after a kill
        state = torch.load(state_file, weights_only=True, map_location=device)
        classifier.load_state_dict(state["classifier"], strict=False)
        if classifier.refines:
            classifier.cache.entries = state["cache"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        start, best = state["epoch"], state["best"]
    images = train_data.split("train")
    augment = Augment(tuple(run.crop_scale), run.hflip, tuple(run.aspect) if run.aspect else None)
    augment = augment if augment.active else None
    rng = np.random.default_rng(run.seed)
    for epoch in range(run.epochs):
        order = rng.permutation(len(images))  # drawn for finished epochs too, so a resumed run matches
        if epoch < start:
            continue
        classifier.train()
        steps = max(1, len(images) // run.batch_size)
        for step in range(steps):
            picked = order[step * run.batch_size : (step + 1) * run.batch_size]
            chunk = [images[i] for i in picked]
            labels = torch.tensor([i.label for i in chunk], device=device)
            seeds = [(run.seed, epoch, int(i)) for i in picked]
            pixels = _pixels(classifier, train_data, chunk, augment, seeds)
            terms = prompt_losses(classifier, pixels, labels)
            if not torch.isfinite(terms["total"]):
                raise TrainingError(_non_finite_message(epoch, step, terms, state_file))
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            _check_finite_parameters(params, epoch, step, state_file)
        scheduler.step()
        val = accuracy(classifier, train_data, "val") if "val" in train_data.splits else None
        if run.select == "last" or val is None or best is None or val > best:
            best = val if val is not None else best
            save_prompts(classifier, run, out / "prompts")
        trainable = {k: v for k, v in classifier.state_dict().items() if not k.startswith("model.")}
        _atomic_save(
            {
                "classifier": trainable,
                "cache": classifier.cache.entries if classifier.refines else torch.zeros(0),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "best": best,
            },
            state_file,
        )
        if progress:
            print(f"epoch {epoch + 1}/{run.epochs}: val accuracy {val}")
        if stop_after is not None and epoch + 1 >= stop_after:
            break
    return {"prompts": str(out / "prompts"), "best_val": best, "notes": train_data.notes}


def _non_finite_message(epoch: int, step: int, terms: dict, state_file: Path) -> str:
    values = ", ".join(f"{name} = {float(v.detach()):.4g}" for name, v in terms.items())
    return (
        f"epoch {epoch + 1}, step {step + 1}: the loss is not finite ({values}); stopped before the "
        f"optimiser step, nothing non-finite was saved ({_last_saved(state_file)}). Lower --lr or check "
        "the model and the images."
    )


def _check_finite_parameters(params: list[torch.Tensor], epoch: int, step: int, state_file: Path) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise TrainingError(
            f"epoch {epoch + 1}, step {step + 1}: the learnt prompts hold NaN or infinity after the "
            f"optimiser step; not saved ({_last_saved(state_file)}). Lower --lr."
        )


def _last_saved(state_file: Path) -> str:
    if not state_file.is_file():
        return "no epoch was saved"
    epoch = torch.load(state_file, weights_only=True)["epoch"]
    return f"the last saved epoch is {epoch}, in {state_file}"


def _check_same_run(out: Path, run: PromptRun) -> None:
    """Write ``out/run.json``, or check that a resumed run has the settings it was started with."""
    settings = json.loads(json.dumps(asdict(run)))
    saved_file = out / "run.json"
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
        if changed:
            raise ConfigError(
                f"{out} holds a run with other settings ({', '.join(changed)}); resume it with the same "
                "settings or choose another --out"
            )
    else:
        saved_file.write_text(json.dumps(settings, indent=2, allow_nan=False) + "\n")


def zero_shot(model: str, init: str = "a photo of a") -> PromptClassifier:
    """The frozen model with the hand-written prompt ``"<init> <class>."`` (CLIP's zero-shot baseline)."""
    return PromptClassifier(create_model(model), ["placeholder"], init).eval()


def _as_classifier(prompts: str | Path | PromptClassifier) -> PromptClassifier:
    if isinstance(prompts, PromptClassifier):
        return prompts
    return load_prompts(prompts).to(pick_device("auto"))


def _scores(classifier: PromptClassifier, data: ClassData, split: str) -> tuple[float, float]:
    classifier.set_classes(data.classnames)
    logits, labels = split_logits(classifier, data, split)
    return top1_accuracy(logits, labels), class_retrieval_map(logits, labels)


def evaluate_base_to_new(
    prompts: str | Path | PromptClassifier, data: ClassData, split: str = "test"
) -> dict:
    """Accuracy on the base and the new classes' ``split`` and their harmonic mean, and the class-to-image
    retrieval mAP of each half; ``prompts`` is a saved prompts folder or a classifier (:func:`zero_shot`)."""
    classifier = _as_classifier(prompts)
    base_acc, base_map = _scores(classifier, base_new(data, "base"), split)
    new_acc, new_map = _scores(classifier, base_new(data, "new"), split)
    return {
        "protocol": "base-to-new",
        "base_acc": base_acc,
        "new_acc": new_acc,
        "hm": harmonic_mean(base_acc, new_acc),
        "base_map": base_map,
        "new_map": new_map,
    }


def evaluate_all_classes(
    prompts: str | Path | PromptClassifier, data: ClassData, split: str = "test"
) -> dict:
    """Accuracy and class-to-image mAP over all of ``data``'s classes, named by ``data`` (the target's own
    class names): the cross-dataset and domain-generalisation protocols, with the trained context, ``W`` and
    cache reused as they are."""
    acc, mean_ap = _scores(_as_classifier(prompts), data, split)
    return {"protocol": "all-classes", "acc": acc, "map": mean_ap}
