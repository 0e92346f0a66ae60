"""A BERT sentence encoder's forward pass in numpy: query texts embedded without importing torch.

A cold ``vlret search`` spends most of its time importing torch and transformers (4 s and 5 more on two
cores), not computing: one query through all-MiniLM-L6-v2 is a few milliseconds of matrix products. This
module reads the same files a sentence-transformers folder holds (``config.json``, ``model.safetensors``,
``tokenizer.json``) with ``safetensors`` and ``tokenizers``, and computes what transformers' ``BertModel``
computes in eval mode: word, position and token-type embeddings, then per layer self-attention and the
feed-forward block, each followed by a residual sum and LayerNorm; the sentence embedding is the mean of the
last hidden states over real tokens (what :class:`~vlret.models.backbones.minilm.SentenceTower` returns).

Only what is needed for the sentence encoders vlret ships is supported (``model_type: bert``, absolute
positions, exact GELU); :func:`open_sentence_encoder` returns None for anything else, and the caller uses
the torch tower. tests/test_bert_numpy.py holds it to the torch tower within float32 rounding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def erf(x: np.ndarray) -> np.ndarray:
    """The error function by Abramowitz and Stegun's formula 7.1.26 (absolute error below 1.5e-7, under
    float32's rounding of values near 1): numpy has no erf, and scipy's import costs a second."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU, ``x Phi(x)`` (transformers' ``"gelu"``)."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class NumpySentenceEncoder:
    """A mean-pooled BERT sentence encoder (see the module docstring); ``max_length`` caps the tokens of a
    text, as the torch tower's does."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray], tokenizer, max_length: int):
        self.config = config
        # sentence-transformers folders name the encoder's tensors bare; a BertModel checkpoint prefixes "bert."
        self.weights = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in weights.items()}
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = tokenizer
        self.max_length = max_length
        tokenizer.enable_truncation(max_length=max_length)
        pad_id = int(config.get("pad_token_id") or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask ``[n, L]``, padded to the longest text."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled sentence embeddings ``[n, width]`` (float32, not normalised)."""
        ids, mask = self.tokenize(texts)
        hidden = self._encode(ids, mask)
        weights = mask[:, :, None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.weights[f"{name}.weight"].T + self.weights[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], self.eps)

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.weights
        length = ids.shape[1]
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        # padded keys get the lowest float, as transformers' extended attention mask does
        blocked = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
        for n in range(self.layers):
            x = self._layer(x, blocked, f"encoder.layer.{n}")
        return x

    def _layer(self, x: np.ndarray, blocked: np.ndarray, name: str) -> np.ndarray:
        batch, length, width = x.shape
        head_width = width // self.heads

        def split(t: np.ndarray) -> np.ndarray:  # [B, L, W] -> [B, heads, L, head_width]
            return t.reshape(batch, length, self.heads, head_width).transpose(0, 2, 1, 3)

        query = split(self._linear(x, f"{name}.attention.self.query"))
        key = split(self._linear(x, f"{name}.attention.self.key"))
        value = split(self._linear(x, f"{name}.attention.self.value"))
        attention = softmax(query @ key.transpose(0, 1, 3, 2) / math.sqrt(head_width) + blocked)
        context = (attention @ value).transpose(0, 2, 1, 3).reshape(batch, length, width)
        x = self._norm(
            self._linear(context, f"{name}.attention.output.dense") + x, f"{name}.attention.output.LayerNorm"
        )
        inner = gelu(self._linear(x, f"{name}.intermediate.dense"))
        return self._norm(self._linear(inner, f"{name}.output.dense") + x, f"{name}.output.LayerNorm")


def supported(config: dict) -> bool:
    """Whether this module computes what transformers would for a model of ``config``."""
    return (
        config.get("model_type") == "bert"
        and config.get("hidden_act") == "gelu"
        and config.get("position_embedding_type", "absolute") == "absolute"
    )


def open_sentence_encoder(folder: Path, max_length: int) -> NumpySentenceEncoder | None:
    """The encoder of a sentence-transformers (or BERT) folder, or None when its files or architecture are
    not what this module computes (the caller then uses the torch tower)."""
    folder = Path(folder)
    files = [folder / "config.json", folder / WEIGHTS_FILE, folder / TOKENIZER_FILE]
    if not all(f.is_file() for f in files):
        return None
    config = json.loads(files[0].read_text(encoding="utf-8"))
    if not supported(config):
        return None
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    return NumpySentenceEncoder(config, load_file(files[1]), Tokenizer.from_file(str(files[2])), max_length)
