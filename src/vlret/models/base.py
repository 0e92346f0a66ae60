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
from safetensors.torch import load_file, save_file
from torch import nn

from vlret.data.transforms import ImageTransform

MODEL_CONFIG_FILE = "vlret_model.json"
HF_MODEL_TYPES = ("clip", "siglip")  # the transformers model types vlret reads as dual encoders
HEAD_WEIGHTS_FILE = "head.safetensors"


@dataclass
class Features:
    """Outputs of one encoder call."""

    embeds: torch.Tensor  # [B, D] global embedding
    tokens: torch.Tensor | None = None  # [B, T, D_t] patch or word features
    mask: torch.Tensor | None = None  # [B, T] bool, True where ``tokens`` holds a real token

    def __len__(self) -> int:
        return len(self.embeds)

    def rows(self, start: int, stop: int) -> Features:
        """Rows ``start:stop`` of every field."""
        return self.select(slice(start, stop))

    def select(self, index: slice | torch.Tensor) -> Features:
        """The rows ``index`` picks (a slice or an index tensor) of every field."""
        return Features(
            self.embeds[index],
            None if self.tokens is None else self.tokens[index],
            None if self.mask is None else self.mask[index],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Features:
        """On ``device``; floating fields cast to ``dtype`` when given."""

        def move(x: torch.Tensor | None, cast: bool) -> torch.Tensor | None:
            if x is None:
                return None
            return x.to(device, dtype) if cast and dtype is not None else x.to(device)

        return Features(move(self.embeds, True), move(self.tokens, True), move(self.mask, False))


class RetrievalModel(nn.Module, ABC):
    """An image tower and a text tower mapping into one space, scored by a similarity head.

    ``head`` (a :class:`~vlret.models.heads.SimilarityHead` sub-module, cosine unless set) is how the
    evaluator, the trainer and the index score texts against items. Saved models record it in their
    configuration and load it back with :meth:`set_head` before their weights (a head may have weights).
    """

    #: the name the registry knows the architecture by (``tiny-cnn``, ``hf:...``)
    name: str
    #: what ``encode_images`` takes: ``"pixels"`` ``[B, 3, H, W]`` or ``"regions"`` ``[B, R, D]`` features
    input_kind: str = "pixels"
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

    def __init__(self) -> None:
        super().__init__()
        from vlret.models.heads import CosineHead  # heads import Features from this module

        self.head = CosineHead()

    def unknown_query_words(self, text: str) -> list[str]:
        """The words of a query this model's vocabulary lacks (a word-level text tower reads them all as one
        unknown token); empty for subword tokenizers, which spell any word."""
        return []

    def set_head(self, head: nn.Module) -> None:
        """Score with ``head`` from now on (its parameters become the model's, prefixed ``head.``)."""
        self.head = head

    def save_head(self, folder: Path) -> dict:
        """Write the head's weights (if it has any) to ``folder/head.safetensors``; returns its description."""
        state = self.head.state_dict()
        if state:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, folder / HEAD_WEIGHTS_FILE)
        return self.head.describe()

    def load_head(self, folder: Path, meta: dict) -> None:
        """Rebuild the head a saved model's ``meta`` describes, with its weights."""
        from vlret.models.heads import build_head

        self.set_head(build_head(meta.get("head")))
        if (folder / HEAD_WEIGHTS_FILE).is_file():
            self.head.load_state_dict(load_file(folder / HEAD_WEIGHTS_FILE))

    def tower_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights without the head's (which :meth:`save_head` writes apart)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("head.")}

    def load_tower_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`tower_state_dict` weights; the head's come from :meth:`load_head`."""
        head_state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        self.load_state_dict({**state, **head_state})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def identity(self) -> dict:
        """What distinguishes this model's outputs: used in cache keys and result files."""
        identity = {"name": self.name, "origin": self.origin, "transform": self.image_transform.to_dict()}
        if not self.head.is_dot_product:  # cosine models keep the identity (and cache keys) they had
            identity["head"] = self.head.describe()
        return identity
