"""The backbone interface every model in vlret implements.

A model turns preprocessed pixels and tokenized texts into features in one joint space:

- ``encode_images(pixels [B, 3, H, W]) -> Features`` and ``encode_texts(batch) -> Features``;
- ``Features.embeds`` is the global embedding ``[B, D]`` (not normalised: scorers decide), ``tokens`` the
  patch / word features ``[B, T, D_t]`` with a boolean ``mask`` ``[B, T]`` (True = real token) where the
  backbone has them;
- ``image_transform`` turns a PIL image into the pixels the model expects; ``tokenize`` turns texts into a batch.

Models are saved as one folder (``vlret_model.json``, ``model.safetensors`` or a Hugging Face folder, and the
tokenizer) and loaded back with :func:`vlret.models.load_model`; nothing is ever unpickled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlret.data.transforms import ImageTransform

MODEL_CONFIG_FILE = "vlret_model.json"


@dataclass
class Features:
    """Outputs of one encoder call."""

    embeds: torch.Tensor  # [B, D] global embedding
    tokens: torch.Tensor | None = None  # [B, T, D_t] patch or word features
    mask: torch.Tensor | None = None  # [B, T] bool, True where ``tokens`` holds a real token


class RetrievalModel(nn.Module, ABC):
    """A dual encoder: an image tower and a text tower mapping into one space."""

    #: the name the registry knows the architecture by (``tiny-cnn``, ``hf:...``)
    name: str
    image_transform: ImageTransform
    #: parameter-name prefixes of pretrained towers, which train at ``lr * backbone_lr_factor``
    backbone_prefixes: tuple[str, ...] = ()
    #: where the weights came from: "initialised" (untrained), "pretrained:<hub id>" or "folder:<path>"
    origin: str = "initialised"

    @abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Turn texts into the batch ``encode_texts`` takes."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> Features:
        """Encode a batch of preprocessed images ``[B, 3, H, W]``."""

    @abstractmethod
    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        """Encode a batch made by :meth:`tokenize`."""

    @abstractmethod
    def save(self, folder: str | Path) -> None:
        """Write the model (configuration, weights, tokenizer) to one folder."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def identity(self) -> dict:
        """What distinguishes this model's outputs: used in cache keys and result files."""
        return {"name": self.name, "origin": self.origin, "transform": self.image_transform.to_dict()}
