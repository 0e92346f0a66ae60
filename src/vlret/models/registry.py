"""The one factory: :func:`create_model` builds any backbone vlret knows by name, or loads a saved folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from vlret.errors import ConfigError
from vlret.models.base import HF_MODEL_TYPES, RetrievalModel
from vlret.models.files import MODEL_CONFIG_FILE
from vlret.models.heads import build_head
from vlret.models.tiny import TINY_ARCHS, TinyDualEncoder
from vlret.models.video import FRAME_MODEL_FOLDER, VideoModel, as_video_model


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
    - ``composed`` (towers from ``options``) or ``composed:IMAGE+TEXT``: pretrained or fresh towers joined by
      new projections (:mod:`vlret.models.composed`).
    - ``conse``: a training-free model for real photos from the pretrained towers (ConSE,
      :mod:`vlret.models.conse`); ``options`` are :class:`~vlret.models.conse.ConSEConfig`'s.
    - ``hf:<hub id or folder>``: a transformers CLIP or SigLIP checkpoint; a bare folder written by
      ``save_pretrained`` is read the same way.
    - ``openclip:<arch>/<pretrained tag>``: open_clip's model zoo (the ``openclip`` extra).
    - a folder containing ``vlret_model.json``: a model saved with ``model.save(folder)``.

    Every command and API that takes a model resolves its name here; a name nothing takes raises one
    :class:`~vlret.errors.ConfigError` listing each reading that was tried.

    ``video`` (:class:`~vlret.models.video.VideoConfig`'s settings) makes it a clip encoder over that model's
    image tower: frames pooled by mean, or by a temporal transformer.
    """
    model = _build(name, captions, seed, options)
    if video is not None:
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
    if name == "composed" or name.startswith("composed:"):
        return _composed(name, captions, seed, options)
    if name == "conse":
        from vlret.models.conse import ConSEModel

        try:
            return ConSEModel.create(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"conse: {exc}") from None
    if name.startswith("hf:"):
        return _from_hf(name[3:])
    if name.startswith("openclip:"):
        from vlret.models.openclip import OpenCLIPModel, parse_name

        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return OpenCLIPModel(*parse_name(name))
    folder = Path(name)
    if (folder / MODEL_CONFIG_FILE).is_file():
        return load_model(folder)
    if _hf_model_type(folder) is not None:
        return _from_hf(name)
    raise ConfigError(_what_was_tried(name))


def _composed(name: str, captions: Sequence[str] | None, seed: int | None, options: dict) -> RetrievalModel:
    """``composed`` (the recipe's towers) or ``composed:IMAGE+TEXT`` (towers named on the command line)."""
    from vlret.models.composed import ComposedModel

    if name.startswith("composed:"):
        towers = name.split(":", 1)[1].split("+")
        if len(towers) != 2 or not all(towers):
            raise ConfigError(
                f"{name!r}: expected composed:IMAGE_TOWER+TEXT_TOWER, e.g. composed:efficientnet-lite0+minilm"
            )
        options = {**options, "image_tower": towers[0], "text_tower": towers[1]}
    with torch.random.fork_rng(devices=[]):  # the projections' initialisation
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = ComposedModel.create(captions=list(captions or []), **options)
        except ValueError as exc:
            if name == "composed":
                raise  # a recipe's options: its reader names the key
            raise ConfigError(f"{name}: {exc}") from None  # towers named on the command line
    pretrained = [t.name for t in (model.image_tower, model.text_tower) if t.pretrained]
    model.origin = "pretrained:" + "+".join(pretrained) if pretrained else "initialised"
    return model


def _hf_model_type(folder: Path) -> str | None:
    """The ``model_type`` of a folder written by transformers' ``save_pretrained`` (None: not one)."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _from_hf(source: str) -> RetrievalModel:
    from vlret.models.hf import HFDualEncoder  # transformers is slow to import; only when needed

    if Path(source).is_dir() and _hf_model_type(Path(source)) is None:
        raise ConfigError(
            f"hf:{source}: the folder has no readable config.json, so it is not a transformers model"
        )
    try:
        model = HFDualEncoder.from_pretrained(source)
    except OSError as exc:
        where = "a folder" if Path(source).is_dir() else "not a folder here, nor a hub id in the local cache"
        raise ConfigError(
            f"hf:{source}: cannot load it ({where}; offline runs need the cache): {exc}"
        ) from None
    model.origin = f"pretrained:{source}"
    return model


def _what_was_tried(name: str) -> str:
    """The one error for a name no resolver took: every reading of it and why each failed."""
    folder = Path(name)
    tried = [
        f"a built-in name ({', '.join(TINY_ARCHS)}, conse, composed, composed:IMAGE+TEXT): it is none of them"
    ]
    if folder.is_dir():
        tried.append(f"a saved vlret model: {folder} has no {MODEL_CONFIG_FILE}")
        model_type = _hf_model_type(folder)
        tried.append(
            f"a transformers folder: {folder} has no config.json"
            if model_type is None
            else f"a transformers folder: it holds a {model_type!r} model, not {' or '.join(HF_MODEL_TYPES)}"
        )
        best = folder / "checkpoints" / "best" / "model"
        if (best / MODEL_CONFIG_FILE).is_file():
            tried.append(f"it is a training run: its best model is {best}")
    else:
        tried.append(f"a folder: {folder} does not exist")
    tried.append("a prefixed name: hf:<hub id or folder>, openclip:<arch>/<pretrained tag>")
    return f"unknown model {name!r}; tried " + "; ".join(tried) + "." + did_you_mean(name)


#: the built-in names a model can be given by (besides folders and prefixed names)
BUILT_IN_NAMES = (*TINY_ARCHS, "conse", "composed")


def close_name(name: str) -> str | None:
    """The built-in or prefixed name ``name`` is probably a typo of (``cones`` -> ``conse``); None if none."""
    import difflib

    head, colon, rest = name.partition(":")
    if colon and "/" not in head:  # a prefixed name
        prefixes = ["hf:", "openclip:", "composed:"]
        if head + ":" in prefixes:
            return None
        found = difflib.get_close_matches(head + ":", prefixes, n=1, cutoff=0.5)
        return found[0] + rest if found else None
    if "/" in name:
        return None  # a path: a missing folder is said as such
    found = difflib.get_close_matches(name, BUILT_IN_NAMES, n=1, cutoff=0.6)
    return found[0] if found and found[0] != name else None


def did_you_mean(name: str) -> str:
    """`` Did you mean 'conse'?`` for a close built-in name, else nothing."""
    close = close_name(name)
    return f" Did you mean {close!r}?" if close else ""


def canonical_model_name(name: str) -> str:
    """``name`` as a record should keep it: folders made absolute, so that an index or a prompts folder finds
    its model from any working directory, and a transformers folder written as ``hf:DIR`` or ``DIR`` named
    one way (``hf:/abs/DIR``)."""
    prefix, rest = ("hf:", name[3:]) if name.startswith("hf:") else ("", name)
    folder = Path(rest)
    if not folder.is_dir():
        return name
    if not prefix and not (folder / MODEL_CONFIG_FILE).is_file() and _hf_model_type(folder) is not None:
        prefix = "hf:"
    return prefix + str(folder.resolve())


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
        model = VideoModel.load(folder, meta, load_model(folder / FRAME_MODEL_FOLDER))
    elif meta.get("kind") == "conse":
        from vlret.models.conse import ConSEModel

        model = ConSEModel.load(folder, meta)
    else:
        raise ConfigError(
            f"{config_file}: unknown model kind {meta.get('kind')!r}; "
            "expected 'tiny', 'hf', 'composed', 'openclip', 'video' or 'conse'"
        )
    model.origin = f"folder:{folder.resolve()}"
    return model


def untrained_warning(name: str) -> str | None:
    """Why searches with the model ``name`` builds would mean little, or None: a ``composed`` model made
    by name joins its towers with new, random projections."""
    if name == "composed" or name.startswith("composed:"):
        return (
            f"{name}: its projections between the towers were never trained (random), so its text search "
            "ranks at random; train it first (vlret train), or index real photos with conse"
        )
    return None


def is_model_reference(name: str) -> bool:
    """True when ``name`` names a model :func:`create_model` can build without training captions."""
    return (
        name in ("composed", "conse")
        or name.startswith(("hf:", "openclip:", "composed:"))
        or (Path(name) / MODEL_CONFIG_FILE).is_file()
        or _hf_model_type(Path(name)) is not None
    )
