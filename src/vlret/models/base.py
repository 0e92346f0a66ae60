"""The backbone interface every model in vlret implements.

A model turns preprocessed pixels and tokenized texts into features in one joint space:

- ``encode_images(pixels [B, 3, H, W]) -> Features`` and ``encode_texts(batch) -> Features``;
- ``Features.embeds`` is the global embedding ``[B, D]`` (not normalised: scorers decide), ``tokens`` the
  patch / word features ``[B, T, D_t]`` with a boolean ``mask`` ``[B, T]`` (True = real token) where the
  backbone has them;
- ``image_transform`` turns a PIL image into the pixels the model expects; ``tokenize`` turns texts into a batch.

Models are saved as one folder (``vlret_model.json``, ``model.safetensors`` or a Hugging Face folder, and the
tokenizer) and loaded back with :func:`vlret.models.load_model`; nothing is ever unpickled.

For plain use every model also has ``encode_text(texts)`` and ``encode_image(images)``, which take strings
and PIL images or files and return numpy arrays (batched, normalised, the model's own preprocessing), and
:func:`similarity` compares them, as sentence-transformers and open_clip users expect.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vlret.data.image_files import load_image, size_problem
from vlret.data.transforms import ImageTransform
from vlret.errors import ConfigError, NonFiniteScoreError
from vlret.models.features import Features
from vlret.models.heads import CosineHead, build_head

HF_MODEL_TYPES = ("clip", "siglip")  # the transformers model types vlret reads as dual encoders
HEAD_WEIGHTS_FILE = "head.safetensors"


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
    #: a built-in model whose making computes what a saved copy holds (``conse``'s class embeddings): an
    #: index named after it keeps a saved copy, which its searches load instead of making it again
    stored_with_index: bool = False

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
        self.head = CosineHead()

    # ----- plain use: strings and pictures in, arrays out -------------------------------------------------
    def encode_text(
        self,
        texts: str | Sequence[str],
        batch_size: int = 64,
        normalize: bool = True,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embeddings ``[N, D]`` of ``texts`` (one text: ``[D]``), L2-normalised unless ``normalize`` is
        False; a progress bar shows for long inputs (``progress=None``: from 1,000 texts on)."""
        single = isinstance(texts, str)
        items = [texts] if single else _listed(texts, "texts", "a string or a list of strings")
        for n, text in enumerate(items):
            if not isinstance(text, str):
                raise ConfigError(f"texts[{n}] is {_kind(text)}, not a string")

        def encode(part: list[str]) -> torch.Tensor:
            batch = {k: v.to(self.device) for k, v in self.tokenize(part).items()}
            return self.encode_texts(batch).embeds

        return self._encode(items, encode, batch_size, normalize, progress, single, "encode text")

    def encode_image(
        self,
        images: Image.Image | str | Path | Sequence[Image.Image | str | Path],
        batch_size: int = 32,
        normalize: bool = True,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embeddings ``[N, D]`` of PIL images or image files (one image: ``[D]``), preprocessed as the
        model expects, L2-normalised unless ``normalize`` is False."""
        if self.input_kind != "pixels":
            raise ConfigError(
                f"{self.name} reads {self.input_kind}, not images: encode its inputs with encode_images"
            )
        if isinstance(images, np.ndarray):
            raise ConfigError(
                f"images is {_kind(images)}: give PIL images (Image.fromarray(array)) or file paths"
            )
        single = isinstance(images, (Image.Image, str, Path))
        items = (
            [images] if single else _listed(images, "images", "a PIL image, a file path or a list of them")
        )
        for n, image in enumerate(items):
            _check_picture(image, f"images[{n}]")

        def encode(part: list) -> torch.Tensor:
            pictures = [im if isinstance(im, Image.Image) else load_image(im) for im in part]
            pixels = np.stack([self.image_transform(im.convert("RGB")) for im in pictures])
            return self.encode_images(torch.from_numpy(pixels).to(self.device)).embeds

        return self._encode(items, encode, batch_size, normalize, progress, single, "encode images")

    @torch.no_grad()
    def _encode(
        self,
        items: list,
        encode: Callable[[list], torch.Tensor],
        batch_size: int,
        normalize: bool,
        progress: bool | None,
        single: bool,
        label: str,
    ) -> np.ndarray:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        show = len(items) >= 1000 if progress is None else progress
        was_training = self.training
        self.eval()
        try:
            parts = [
                encode(items[start : start + batch_size]).float().cpu()
                for start in tqdm(range(0, len(items), batch_size), desc=label, disable=not show)
            ]
        finally:
            self.train(was_training)
        if not parts:
            raise ConfigError("nothing to encode: give at least one input")
        out = torch.cat(parts)
        if normalize:
            out = F.normalize(out, dim=-1)
        return out.numpy()[0] if single else out.numpy()

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

    def fingerprint(self) -> str:
        """:func:`model_fingerprint` of this model: index builds record it, and refuse to join or update
        a build of other weights under the same name."""
        return model_fingerprint(self, self.identity())

    def identity(self) -> dict:
        """What distinguishes this model's outputs: used in cache keys and result files."""
        identity = {"name": self.name, "origin": self.origin, "transform": self.image_transform.to_dict()}
        if not self.head.is_dot_product:  # cosine models keep the identity (and cache keys) they had
            identity["head"] = self.head.describe()
        return identity


def _kind(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _listed(values, name: str, expected: str) -> list:
    """``values`` as a list, or a ConfigError saying what ``name`` takes."""
    if values is None or isinstance(values, (bytes, dict)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ConfigError(f"{name}: expected {expected}, not {_kind(values)}")
    return list(values)


def _check_picture(image, where: str) -> None:
    """A PIL image within the limits every image in vlret has (pixels, aspect ratio), or a path (checked
    when it is read); anything else is refused naming ``where``."""
    if isinstance(image, (str, Path)):
        return
    if not isinstance(image, Image.Image):
        advice = " (Image.fromarray(array) makes one)" if isinstance(image, np.ndarray) else ""
        raise ConfigError(f"{where} is {_kind(image)}, not a PIL image or a file path{advice}")
    problem = size_problem(*image.size)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def model_fingerprint(model: nn.Module, identity: dict) -> str:
    """A hash of what decides a model's outputs: its identity less where it was read from (architecture,
    preprocessing, head) and every weight and buffer, byte for byte. The same weights read from another
    folder give the same fingerprint; the same folder with other weights does not."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(_without_origins(identity), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _without_origins(value):
    """An identity without where it was read from: no ``origin``, and ``hf:<folder or id>`` names as
    ``hf`` (the weights, hashed beside it, say which model it is)."""
    if isinstance(value, dict):
        return {
            k: "hf" if k == "name" and str(v).startswith("hf:") else _without_origins(v)
            for k, v in value.items()
            if k != "origin"
        }
    if isinstance(value, list):
        return [_without_origins(v) for v in value]
    return value


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities of embeddings ``a`` ``[N, D]`` (or ``[D]``) and ``b`` ``[M, D]`` (or ``[D]``):
    ``[N, M]``, with the one-embedding axes dropped."""
    for name, value in (("a", a), ("b", b)):
        if value is None or np.asarray(value).dtype == object or np.ndim(value) not in (1, 2):
            raise ConfigError(f"similarity: {name} must be embeddings [N, D] or [D], not {_kind(value)}")
    left, right = (
        np.atleast_2d(np.asarray(a, dtype=np.float32)),
        np.atleast_2d(np.asarray(b, dtype=np.float32)),
    )
    for values in (left, right):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):  # as ranking refuses non-finite scores: NaN would compare as no number does
            row, column = (int(i) for i in bad[0])
            raise NonFiniteScoreError(row, column, float(values[row, column]))
    if left.shape[1] != right.shape[1]:
        raise ConfigError(f"embeddings of {left.shape[1]} and {right.shape[1]} dimensions cannot be compared")
    left = left / np.maximum(np.linalg.norm(left, axis=1, keepdims=True), 1e-12)
    right = right / np.maximum(np.linalg.norm(right, axis=1, keepdims=True), 1e-12)
    scores = left @ right.T
    if np.ndim(a) == 1 and np.ndim(b) == 1:
        return scores[0, 0]
    if np.ndim(a) == 1:
        return scores[0]
    if np.ndim(b) == 1:
        return scores[:, 0]
    return scores
