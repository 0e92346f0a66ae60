"""A bidirectional GRU over a word vocabulary: the text encoder of SCAN, SGRAF and VSL (no GloVe).

Words are embedded (``word_dim`` 300, initialised uniformly in ±0.1), run through a one-layer bi-GRU, and
the two directions' outputs are averaged per word (SGRAF's ``use_bi_gru``): those are the tokens; their mean
over the real words is the global vector. Padded positions never reach the GRU (packed sequences), so a
caption's features do not depend on what it was batched with.

The vocabulary is SCAN's: ``<pad> <start> <end> <unk>`` are ids 0-3 and every text is wrapped as
``<start> words <end>``. It is read from a SCAN vocabulary file (``vocab: path``) or built from the
training captions, keeping words seen at least ``min_count`` times (SCAN: 4). Texts are lower-cased and
split on whitespace and punctuation by the ``tokenizers`` library (SCAN uses NLTK's ``word_tokenize``; the
two differ on contractions such as "don't").
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vlret.data.precomp import SCAN_SPECIALS, read_scan_vocab
from vlret.errors import ConfigError
from vlret.models.backbones.base import TextTower
from vlret.models.base import Features
from vlret.models.word_augment import WordPieces

CONFIG_FILE = "bigru.json"
TOKENIZER_FILE = "tokenizer.json"


def _pre_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def vocabulary_from_captions(captions: Sequence[str], min_count: int) -> dict[str, int]:
    """SCAN's vocabulary rule: the specials, then words seen at least ``min_count`` times (by count, then
    alphabetically, so the ids do not depend on caption order)."""
    tokenizer = _pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in captions:
        normal = tokenizer.normalizer.normalize_str(text)
        counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normal))
    words = sorted(
        (w for w, c in counts.items() if c >= min_count and w not in SCAN_SPECIALS),
        key=lambda w: (-counts[w], w),
    )
    return {word: n for n, word in enumerate([*SCAN_SPECIALS, *words])}


def word_tokenizer(vocab: dict[str, int], max_length: int) -> Tokenizer:
    """A ``tokenizers`` tokenizer for a SCAN vocabulary: ``<start> words <end>``, padded with ``<pad>``."""
    tokenizer = _pre_tokenizer()
    tokenizer.model = WordLevel(vocab, unk_token="<unk>")
    tokenizer.post_processor = TemplateProcessing(
        single="<start> $A <end>", special_tokens=[("<start>", vocab["<start>"]), ("<end>", vocab["<end>"])]
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=vocab["<pad>"], pad_token="<pad>")
    return tokenizer


class BiGRUTower(TextTower):
    """Word embeddings, a bi-GRU, directions averaged; see the module docstring."""

    name = "bigru"
    pretrained = False

    def __init__(
        self,
        tokenizer: Tokenizer,
        word_dim: int = 300,
        hidden: int = 1024,
        max_length: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ConfigError(f"text_options.dropout: expected a number in [0, 1), got {dropout!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.word_dim, self.width, self.dropout = word_dim, hidden, dropout
        self.embed = nn.Embedding(tokenizer.get_vocab_size(), word_dim, padding_idx=0)
        self.embed_dropout = nn.Dropout(dropout)  # SGRAF / VSL: 0.4 on the word embeddings
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.gru = nn.GRU(word_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)

    @classmethod
    def create(
        cls,
        captions: Sequence[str] | None = None,
        vocab: str | None = None,
        min_count: int = 4,
        word_dim: int = 300,
        hidden: int = 1024,
        max_length: int = 64,
        dropout: float = 0.0,
    ) -> BiGRUTower:
        """From a SCAN vocabulary file (``vocab``) or the training ``captions``."""
        if vocab is not None:
            words = read_scan_vocab(vocab)
        elif captions:
            words = vocabulary_from_captions(captions, min_count)
        else:
            raise ConfigError(
                "the bigru text tower needs a vocabulary: text_options: {vocab: FILE} or training captions"
            )
        return cls(word_tokenizer(words, max_length), word_dim, hidden, max_length, dropout)

    @classmethod
    def load(cls, folder: Path, max_length: int) -> BiGRUTower:
        """The architecture a composed model saved in ``folder`` (its weights are loaded after)."""
        config = json.loads((folder / CONFIG_FILE).read_text())
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        return cls(tokenizer, config["word_dim"], config["hidden"], max_length, config.get("dropout", 0.0))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def word_pieces(self) -> WordPieces:
        """Every token is a word; masked words read ``<unk>``."""
        vocab = self.tokenizer.get_vocab()
        special = [vocab[t] for t in ("<pad>", "<start>", "<end>") if t in vocab]
        return WordPieces.from_vocab(vocab, special, vocab["<unk>"], vocab.get("<pad>", 0), wordpiece=False)

    def unknown_words(self, texts: list[str]) -> tuple[int, int]:
        """(words, words outside the vocabulary, which read as ``<unk>``) over ``texts``."""
        unk = self.tokenizer.token_to_id("<unk>")
        words = unknown = 0
        for encoding in self.tokenizer.encode_batch(list(texts)):
            real = [i for i, m in zip(encoding.ids, encoding.attention_mask, strict=True) if m][1:-1]
            words += len(real)
            unknown += sum(i == unk for i in real)
        return words, unknown

    def forward(self, batch: dict[str, torch.Tensor]) -> Features:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        lengths = mask.sum(1).clamp(min=1)
        packed = pack_padded_sequence(
            self.embed_dropout(self.embed(ids)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        words = (out[..., : self.width] + out[..., self.width :]) / 2
        words = words.masked_fill(~mask[..., None], 0.0)
        pooled = words.sum(1) / lengths[:, None].to(words.dtype)
        return Features(pooled, words, mask)

    def save_files(self, folder: Path) -> None:
        target = folder / "text_tower"
        target.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(target / TOKENIZER_FILE))
        (target / CONFIG_FILE).write_text(
            json.dumps({"word_dim": self.word_dim, "hidden": self.width, "dropout": self.dropout}) + "\n"
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "vocab": self.tokenizer.get_vocab_size(),
            "word_dim": self.word_dim,
            "hidden": self.width,
            "dropout": self.dropout,
        }
