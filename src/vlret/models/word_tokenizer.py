"""A word-level tokenizer trained on captions with the Hugging Face ``tokenizers`` library.

Lower-cases, splits on whitespace and punctuation, maps words seen fewer than ``min_frequency`` times to
``[UNK]``, and wraps every text as ``[CLS] words [SEP]``. Saved as a standard ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import WordLevelTrainer

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP]  # ids 0..3


def train_word_tokenizer(texts: Iterable[str], max_length: int = 32, min_frequency: int = 1) -> Tokenizer:
    """Build the vocabulary from ``texts``; ids 0-3 are ``[PAD] [UNK] [CLS] [SEP]``."""
    tokenizer = Tokenizer(WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=min_frequency)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    configure(tokenizer, max_length)
    return tokenizer


def configure(tokenizer: Tokenizer, max_length: int) -> None:
    """Add the ``[CLS] ... [SEP]`` template, truncation to ``max_length`` and padding with ``[PAD]``."""
    cls_id, sep_id, pad_id = (tokenizer.token_to_id(t) for t in (CLS, SEP, PAD))
    tokenizer.post_processor = TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=PAD)


def words_outside(tokenizer: Tokenizer, text: str) -> list[str]:
    """The words of ``text`` (as the tokenizer normalises and splits them) that its vocabulary lacks, in
    order, each once: what a word-level model reads as its unknown token. Punctuation is not reported."""
    normalised = tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str(normalised) if tokenizer.pre_tokenizer else []
    words = [word for word, _ in pieces] if pieces else normalised.split()
    unknown = (w for w in words if tokenizer.token_to_id(w) is None and any(c.isalnum() for c in w))
    return list(dict.fromkeys(unknown))
