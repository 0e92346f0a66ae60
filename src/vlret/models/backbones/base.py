"""The tower interface: one encoder of one modality, composed into a model by :mod:`vlret.models.composed`.

An image tower maps pixels ``[B, 3, H, W]`` (made by its ``transform``) to :class:`Features` in its own
width: a global vector ``[B, width]`` and tokens ``[B, T, width]`` (patches, feature-map cells or regions).
A text tower tokenizes texts and maps them to a global vector and word tokens with a mask. Towers know
how to rebuild themselves from a saved folder (``save`` / ``load``) and name what they are in ``describe``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlret.data.transforms import ImageTransform
from vlret.models.base import Features
from vlret.models.word_augment import WordPieces


class ImageTower(nn.Module):
    name: str
    width: int
    transform: ImageTransform
    #: what ``forward`` takes: ``"pixels"`` (made by ``transform``) or ``"regions"`` ``[B, R, D]``
    input_kind: str = "pixels"
    #: True when the tower comes with trained weights (a composed model then freezes it by default)
    pretrained: bool = True

    def forward(self, pixels: torch.Tensor) -> Features:
        raise NotImplementedError

    def save_files(self, folder: Path) -> None:
        """Write what the tower needs besides its weights to rebuild itself (a configuration)."""

    def describe(self) -> dict:
        return {"name": self.name}


class TextTower(nn.Module):
    name: str
    width: int
    #: True when the tower comes with trained weights (a composed model then freezes it by default)
    pretrained: bool = True

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> Features:
        raise NotImplementedError

    def word_pieces(self) -> WordPieces | None:
        """What word-level text augmentation needs to know of the vocabulary (None: not supported)."""
        return None

    def save_files(self, folder: Path) -> None:
        """Write what the tower needs besides its weights (a tokenizer, a configuration)."""

    def describe(self) -> dict:
        return {"name": self.name}
