"""Towers, one per file, and the names they are built by.

Image towers: ``efficientnet-lite0`` (pretrained, pixels), ``regions`` (precomputed region features),
``hf-vision`` (a transformers ViT / Swin by ``source``: hub id or folder) and ``tiny-vit`` (a small ViT
trained from scratch).
Text towers: ``minilm`` (pretrained sentence encoder), ``bigru`` (a word-level bi-GRU, SCAN style) and
``hf-text`` (a transformers BERT-style encoder by ``source``, ``pooling: cls | mean``).
``options`` are the tower's own settings (a recipe's ``image_options`` / ``text_options``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vlret.errors import ConfigError

if TYPE_CHECKING:  # the towers import torch, which the numpy query encoder of this package does without
    from vlret.models.backbones.base import ImageTower, TextTower

IMAGE_TOWERS = ("efficientnet-lite0", "regions", "hf-vision", "tiny-vit")
TEXT_TOWERS = ("minilm", "bigru", "hf-text")


def _options(kind: str, name: str, options: dict | None, allowed: tuple[str, ...]) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "none"
        raise ConfigError(f"{kind}_options: the {name} tower takes {takes}; unknown: {', '.join(unknown)}")
    return options


def build_image_tower(
    name: str, pretrained: bool = True, options: dict | None = None, saved: Path | None = None
) -> ImageTower:
    """An image tower by name; ``saved``: the folder a composed model saved it in (weights loaded after)."""
    if name == "efficientnet-lite0":
        from vlret.models.backbones.efficientnet_lite import EfficientNetLite0Tower

        _options("image", name, options, ())
        return EfficientNetLite0Tower(pretrained)
    if name == "regions":
        from vlret.models.backbones.regions import RegionTower

        return RegionTower(**_options("image", name, options, ("dim",)))
    if name == "hf-vision":
        from vlret.models.backbones.hf_vision import HFVisionTower

        options = _options("image", name, options, ("source", "image_size"))
        if saved is not None:
            return HFVisionTower(saved, weights=False, image_size=options.get("image_size"))
        if "source" not in options:
            raise ConfigError("image_options.source: the hf-vision tower needs a hub id or folder")
        return HFVisionTower(options["source"], image_size=options.get("image_size"))
    if name == "tiny-vit":
        from vlret.models.backbones.tiny_vit import TinyViTTower

        options = _options("image", name, options, ("image_size", "patch_size", "width", "layers", "heads"))
        try:
            return TinyViTTower(**options)
        except ValueError as exc:
            raise ConfigError(f"image_options: {exc}") from None
    raise ConfigError(f"unknown image tower {name!r}; expected one of {IMAGE_TOWERS}")


def build_text_tower(
    name: str,
    max_length: int,
    saved: Path | None = None,
    options: dict | None = None,
    captions: Sequence[str] | None = None,
) -> TextTower:
    """A text tower by name; ``saved``: the folder a composed model saved it in (weights loaded after);
    ``captions``: the training captions, for towers that build a vocabulary from them."""
    if name == "minilm":
        from vlret.models.backbones.minilm import SentenceTower

        _options("text", name, options, ())
        if saved is not None:
            return SentenceTower(saved, max_length, weights=False)
        return SentenceTower(None, max_length)
    if name == "bigru":
        from vlret.models.backbones.bigru import BiGRUTower

        options = _options("text", name, options, ("vocab", "min_count", "word_dim", "hidden", "dropout"))
        if saved is not None:
            return BiGRUTower.load(saved, max_length)
        return BiGRUTower.create(captions, max_length=max_length, **options)
    if name == "hf-text":
        from vlret.models.backbones.minilm import HFTextTower

        options = _options("text", name, options, ("source", "pooling"))
        pooling = options.get("pooling", "cls")
        if saved is not None:
            return HFTextTower(saved, max_length, weights=False, pooling=pooling)
        if "source" not in options:
            raise ConfigError("text_options.source: the hf-text tower needs a hub id or folder")
        return HFTextTower(options["source"], max_length, pooling=pooling)
    raise ConfigError(f"unknown text tower {name!r}; expected one of {TEXT_TOWERS}")


def __getattr__(name: str):
    if name in ("ImageTower", "TextTower"):
        from vlret.models.backbones import base

        return getattr(base, name)
    raise AttributeError(f"module 'vlret.models.backbones' has no attribute {name!r}")


__all__ = ["IMAGE_TOWERS", "TEXT_TOWERS", "ImageTower", "TextTower", "build_image_tower", "build_text_tower"]
