"""Training and evaluating learnt prompts (CoOp, CoOp + TextRefiner) on class data, base-to-new.

Few-shot training data (``shots`` per class from train, 4 per class from val, seeded) of the ``base`` half of
the classes (or ``all``); SGD at 0.002 with momentum 0.9 and weight decay 5e-4, the first epoch at a constant
1e-5, then cosine annealing stepped per epoch; batch 32; the checkpoint is chosen on val accuracy (the
released ``best_val``; ``select: last`` keeps the final epoch, CoOp's convention). Every epoch ends with an
atomic checkpoint (learnt weights, cache, optimiser, scheduler, generator), so a killed run resumes.

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

from vlret.data.classes import ClassData, base_new, few_shot_data, harmonic_mean
from vlret.data.images import load_image
from vlret.errors import ConfigError
from vlret.models import load_model
from vlret.models.prompt_classifier import PromptClassifier, RefinerConfig

PROMPTS_FILE, PROMPTS_META = "prompts.safetensors", "prompts.json"
METHODS = ("coop", "textrefiner")


@dataclass
class PromptRun:
    """One prompt-learning run (what ``vlret prompts train`` takes)."""

    model: str  # a saved vlret model folder whose text tower takes input embeddings
    method: str = "textrefiner"  # or coop
    subset: str = "base"  # base (base-to-new), or all (cross-dataset)
    shots: int = 16
    seed: int = 1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    init: str = "a photo of a"
    select: str = "best_val"  # or last
    refiner: RefinerConfig = field(default_factory=RefinerConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.select not in ("best_val", "last"):
            raise ConfigError(f"select must be best_val or last, not {self.select!r}")
        if self.method == "coop":
            self.refiner = RefinerConfig(alpha=0.0)


def _pixels(classifier: PromptClassifier, data: ClassData, images) -> torch.Tensor:
    transform = classifier.model.image_transform
    return torch.from_numpy(np.stack([transform(load_image(data.path(i), i.path)) for i in images]))


@torch.no_grad()
def accuracy(classifier: PromptClassifier, data: ClassData, split: str, batch_size: int = 100) -> float:
    """Top-1 accuracy (%) of ``classifier`` on ``data``'s ``split`` (its classes must be the classifier's)."""
    classifier.eval()
    images = data.split(split)
    correct = 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        logits = classifier.logits(_pixels(classifier, data, chunk))
        correct += int((logits.argmax(1) == torch.tensor([i.label for i in chunk])).sum())
    return 100.0 * correct / max(len(images), 1)


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
    state = {"ctx": classifier.prompts.ctx.detach().contiguous()}
    if classifier.refines:
        state["cache"] = classifier.cache.entries.detach().contiguous()
        state["aggregation"] = classifier.aggregation.proj.weight.detach().contiguous()
    save_file(state, folder / PROMPTS_FILE)
    meta = {
        "model": run.model,
        "init": run.init,
        "refiner": asdict(classifier.refiner),
        "classnames": classifier.prompts.classnames,
        "method": run.method,
    }
    (folder / PROMPTS_META).write_text(json.dumps(meta, indent=2) + "\n")


def load_prompts(folder: str | Path) -> PromptClassifier:
    """A classifier from :func:`save_prompts`' folder (the alignment MLP, training-only, is not restored)."""
    folder = Path(folder)
    meta = json.loads((folder / PROMPTS_META).read_text())
    classifier = PromptClassifier(
        load_model(meta["model"]), meta["classnames"], meta["init"], RefinerConfig(**meta["refiner"])
    )
    state = load_file(folder / PROMPTS_FILE)
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
    torch.manual_seed(run.seed)
    train_data = few_shot_data(base_new(data, run.subset), run.shots, run.seed)
    classifier = PromptClassifier(load_model(run.model), train_data.classnames, run.init, run.refiner)
    params = _trainable(classifier)
    optimizer = torch.optim.SGD(params, lr=run.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _lr_factor(e, run.epochs, run.lr))
    state_file, start, best = out / "checkpoint.pt", 0, None
    if state_file.is_file():  # resume after a kill
        state = torch.load(state_file, weights_only=True)
        classifier.load_state_dict(state["classifier"], strict=False)
        if classifier.refines:
            classifier.cache.entries = state["cache"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, best = state["epoch"], state["best"]
    images = train_data.split("train")
    rng = np.random.default_rng(run.seed)
    for epoch in range(run.epochs):
        order = rng.permutation(len(images))  # drawn for finished epochs too, so a resumed run matches
        if epoch < start:
            continue
        classifier.train()
        steps = max(1, len(images) // run.batch_size)
        for step in range(steps):
            chunk = [images[i] for i in order[step * run.batch_size : (step + 1) * run.batch_size]]
            labels = torch.tensor([i.label for i in chunk])
            terms = classifier.training_losses(_pixels(classifier, train_data, chunk), labels)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
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


def zero_shot(model: str, init: str = "a photo of a") -> PromptClassifier:
    """The frozen model with the hand-written prompt ``"<init> <class>."`` (CLIP's zero-shot baseline)."""
    return PromptClassifier(load_model(model), ["placeholder"], init).eval()


def evaluate_base_to_new(
    prompts: str | Path | PromptClassifier, data: ClassData, split: str = "test"
) -> dict:
    """Accuracy on the base and the new classes' ``split`` and their harmonic mean; ``prompts`` is a saved
    prompts folder or a classifier (:func:`zero_shot`)."""
    classifier = prompts if isinstance(prompts, PromptClassifier) else load_prompts(prompts)
    base, new = base_new(data, "base"), base_new(data, "new")
    classifier.set_classes(base.classnames)
    base_acc = accuracy(classifier, base, split)
    classifier.set_classes(new.classnames)
    new_acc = accuracy(classifier, new, split)
    return {"base_acc": base_acc, "new_acc": new_acc, "hm": harmonic_mean(base_acc, new_acc)}
