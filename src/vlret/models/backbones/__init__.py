"""Towers, one per file, and the names they are built by.

Image towers: ``efficientnet-lite0`` (pretrained, pixels) and ``regions`` (precomputed region features).
Text towers: ``minilm`` (pretrained sentence encoder) and ``bigru`` (a word-level bi-GRU, SCAN style).
``options`` are the tower's own settings (a recipe's ``image_options`` / ``text_options``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlret.errors import ConfigError
from vlret.models.backbones.base import ImageTower, TextTower

IMAGE_TOWERS = ("efficientnet-lite0", "regions")
TEXT_TOWERS = ("minilm", "bigru")


def _options(kind: str, name: str, options: dict | None, allowed: tuple[str, ...]) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "none"
        raise ConfigError(f"{kind}_options: the {name} tower takes {takes}; unknown: {', '.join(unknown)}")
    return options


def build_image_tower(name: str, pretrained: bool = True, options: dict | None = None) -> ImageTower:
    if name == "efficientnet-lite0":
        from vlret.models.backbones.efficientnet_lite import EfficientNetLite0Tower

        _options("image", name, options, ())
        return EfficientNetLite0Tower(pretrained)
    if name == "regions":
        from vlret.models.backbones.regions import RegionTower

        return RegionTower(**_options("image", name, options, ("dim",)))
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

        options = _options("text", name, options, ("vocab", "min_count", "word_dim", "hidden"))
        if saved is not None:
            return BiGRUTower.load(saved, max_length)
        return BiGRUTower.create(captions, max_length=max_length, **options)
    raise ConfigError(f"unknown text tower {name!r}; expected one of {TEXT_TOWERS}")


__all__ = ["IMAGE_TOWERS", "TEXT_TOWERS", "ImageTower", "TextTower", "build_image_tower", "build_text_tower"]
