"""Checkpoints written atomically: each in its own ``step-NNNNNNN`` folder, published by swapping a symlink.

``checkpoints/last`` and ``checkpoints/best`` are symbolic links; replacing a link with ``os.replace`` is
atomic, so a reader (or a resumed run) sees the previous checkpoint or the new one, never a partial one.
Folders no link points to are removed afterwards. The trainer state is saved with ``torch.save`` and read
back with ``weights_only=True``: tensors and plain containers only, nothing arbitrary is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from vlret.errors import ConfigError, TrainingError
from vlret.models.base import RetrievalModel
from vlret.models.registry import load_model

STATE_FILE = "trainer_state.pt"


def _publish(link: Path, target_name: str) -> None:
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def save_checkpoint(
    folder: Path,
    model: RetrievalModel,
    state: dict,
    step: int,
    is_best: bool = False,
    meta: dict | None = None,
) -> Path:
    """Write model + trainer state for ``step`` and point ``last`` (and ``best`` if asked) at it."""
    name = f"step-{step:07d}"
    final = folder / name
    tmp = folder / f".{name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp / "model")
        torch.save(state, tmp / STATE_FILE)
        (tmp / "meta.json").write_text(json.dumps({"step": step, **(meta or {})}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = os.readlink(folder / "last") if (folder / "last").is_symlink() else "none"
        raise TrainingError(
            f"cannot write the checkpoint of step {step} to {folder} ({_reason(exc)}); nothing partial was "
            f"left, and the previous checkpoint ({previous}) is intact. Free some space and resume."
        ) from None
    _publish(folder / "last", name)
    if is_best:
        _publish(folder / "best", name)
    _prune(folder)
    return final


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _prune(folder: Path) -> None:
    keep = {os.readlink(folder / link) for link in ("last", "best") if (folder / link).is_symlink()}
    for path in folder.glob("step-*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def refuse_to_replace(folder: Path) -> None:
    """Refuse to start a new run where ``folder`` holds another run's checkpoints (they are not replaced
    silently: indexes and results may point at them)."""
    held = sorted(p.name for p in folder.glob("step-*")) if folder.is_dir() else []
    if not held:
        return
    meta = read_meta(folder, "best") or read_meta(folder, "last") or {}
    what = (
        f"its best checkpoint is step {meta['step']}" if "step" in meta else f"checkpoints {', '.join(held)}"
    )
    raise ConfigError(
        f"{folder.parent} holds another training run ({what}); it is not replaced silently. Resume it "
        "with --resume (the same recipe), train into a new output_dir, or pass --overwrite to delete it "
        "and start afresh"
    )


def clear_run(out: Path) -> None:
    """Remove what a run leaves in ``out`` (checkpoints, logs, the recorded recipe) before a fresh start,
    so the new run's logs are not appended to an old run's."""
    out = Path(out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    shutil.rmtree(out / "memo", ignore_errors=True)
    for name in ("metrics.jsonl", "recipe.json"):
        (out / name).unlink(missing_ok=True)


def has_checkpoint(folder: Path) -> bool:
    return (folder / "last" / STATE_FILE).is_file()


def load_checkpoint(folder: Path, which: str = "last") -> tuple[RetrievalModel, dict]:
    """The model and trainer state of ``last`` or ``best``."""
    path = folder / which
    model = load_model(path / "model")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return model, state


def read_meta(folder: Path, which: str = "best") -> dict | None:
    path = folder / which / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None
