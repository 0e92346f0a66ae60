"""Pretrained towers, one per file, and the names they are built by."""

from __future__ import annotations

from pathlib import Path

from vlret.errors import ConfigError
from vlret.models.backbones.base import ImageTower, TextTower

IMAGE_TOWERS = ("efficientnet-lite0",)
TEXT_TOWERS = ("minilm",)


def build_image_tower(name: str, pretrained: bool = True) -> ImageTower:
    if name == "efficientnet-lite0":
        from vlret.models.backbones.efficientnet_lite import EfficientNetLite0Tower

        return EfficientNetLite0Tower(pretrained)
    raise ConfigError(f"unknown image tower {name!r}; expected one of {IMAGE_TOWERS}")


def build_text_tower(name: str, max_length: int, saved: Path | None = None) -> TextTower:
    """A text tower by name; ``saved``: the folder a composed model saved it in (weights loaded after)."""
    if name == "minilm":
        from vlret.models.backbones.minilm import SentenceTower

        if saved is not None:
            return SentenceTower(saved, max_length, weights=False)
        return SentenceTower(None, max_length)
    raise ConfigError(f"unknown text tower {name!r}; expected one of {TEXT_TOWERS}")


__all__ = ["IMAGE_TOWERS", "TEXT_TOWERS", "ImageTower", "TextTower", "build_image_tower", "build_text_tower"]
