"""The one factory: :func:`create_model` builds any backbone vlret knows by name, or loads a saved folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from vlret.errors import ConfigError
from vlret.models.base import MODEL_CONFIG_FILE, RetrievalModel
from vlret.models.heads import build_head
from vlret.models.tiny import TINY_ARCHS, TinyDualEncoder

NAMES_HELP = "tiny-cnn, tiny-vit, composed, hf:<hub id or folder>, openclip:<arch>/<pretrained tag>, or a folder saved by vlret"


def create_model(
    name: str,
    captions: Sequence[str] | None = None,
    seed: int | None = 0,
    head: str | dict | None = None,
    video: dict | None = None,
    **options,
) -> RetrievalModel:
    """Build a model by name, scored by ``head`` (a head name or ``{"name": ..., **options}``; cosine by
    default; a saved folder keeps its own head unless one is given).

    - ``tiny-cnn`` / ``tiny-vit``: a fresh tiny dual encoder; ``captions`` (the training captions) build its
      vocabulary; ``options`` override :class:`~vlret.models.tiny.TinyConfig` fields; ``seed`` fixes the init.
    - ``hf:<hub id or folder>``: a transformers CLIP or SigLIP checkpoint.
    - ``openclip:<arch>/<pretrained tag>``: open_clip's model zoo (the ``openclip`` extra).
    - a folder containing ``vlret_model.json``: a model saved with ``model.save(folder)``.

    ``video`` (:class:`~vlret.models.video.VideoConfig`'s settings) makes it a clip encoder over that model's
    image tower: frames pooled by mean, or by a temporal transformer.
    """
    model = _build(name, captions, seed, options)
    if video is not None:
        from vlret.models.video import as_video_model

        with torch.random.fork_rng(devices=[]):  # the temporal transformer's initialisation
            if seed is not None:
                torch.manual_seed(seed)
            model = as_video_model(model, video)
    if head is not None:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model.set_head(build_head(head))
    return model


def _build(name: str, captions: Sequence[str] | None, seed: int | None, options: dict) -> RetrievalModel:
    if name in TINY_ARCHS:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return TinyDualEncoder.from_captions(name, list(captions or []), **options)
    if name == "composed":
        from vlret.models.composed import ComposedModel

        with torch.random.fork_rng(devices=[]):  # the projections' initialisation
            if seed is not None:
                torch.manual_seed(seed)
            model = ComposedModel.create(captions=list(captions or []), **options)
        pretrained = [t.name for t in (model.image_tower, model.text_tower) if t.pretrained]
        model.origin = "pretrained:" + "+".join(pretrained) if pretrained else "initialised"
        return model
    if name.startswith("hf:"):
        from vlret.models.hf import HFDualEncoder  # transformers is slow to import; only when needed

        model = HFDualEncoder.from_pretrained(name[3:])
        model.origin = f"pretrained:{name[3:]}"
        return model
    if name.startswith("openclip:"):
        from vlret.models.openclip import OpenCLIPModel, parse_name

        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return OpenCLIPModel(*parse_name(name))
    if (Path(name) / MODEL_CONFIG_FILE).is_file():
        return load_model(name)
    raise ConfigError(f"unknown model {name!r}; expected {NAMES_HELP}")


def load_model(folder: str | Path) -> RetrievalModel:
    """Load a model saved by ``model.save(folder)``."""
    folder = Path(folder)
    config_file = folder / MODEL_CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"{folder} is not a saved vlret model (no {MODEL_CONFIG_FILE})")
    meta = json.loads(config_file.read_text())
    if meta.get("kind") == "tiny":
        model = TinyDualEncoder.load(folder, meta)
    elif meta.get("kind") == "hf":
        from vlret.models.hf import HFDualEncoder

        model = HFDualEncoder.load(folder, meta)
    elif meta.get("kind") == "composed":
        from vlret.models.composed import ComposedModel

        model = ComposedModel.load(folder, meta)
    elif meta.get("kind") == "openclip":
        from vlret.models.openclip import OpenCLIPModel

        model = OpenCLIPModel.load(folder, meta)
    elif meta.get("kind") == "video":
        from vlret.models.video import VideoModel

        model = VideoModel.load(folder, meta)
    else:
        raise ConfigError(
            f"{config_file}: unknown model kind {meta.get('kind')!r}; "
            "expected 'tiny', 'hf', 'composed', 'openclip' or 'video'"
        )
    model.origin = f"folder:{folder.resolve()}"
    return model


def is_model_reference(name: str) -> bool:
    """True when ``name`` names a model :func:`create_model` can build without training captions."""
    return (
        name == "composed"
        or name.startswith(("hf:", "openclip:"))
        or (Path(name) / MODEL_CONFIG_FILE).is_file()
    )
