"""Tiny transformers CLIP and SigLIP checkpoints built offline, for tests."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.processors import TemplateProcessing
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
)

from vlret.models.word_tokenizer import train_word_tokenizer

WORDS = ["a red circle", "a blue square on the left", "two green triangles", "an orange diamond at the top"]


def _hf_tokenizer(max_length: int, start_token: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: ``[CLS] words [SEP]`` like CLIP's start and end tokens, or, without
    ``start_token``, ``words [SEP]`` like SigLIP's (an end token only)."""
    tok: Tokenizer = train_word_tokenizer(WORDS, max_length=max_length)
    tok.no_padding()
    tok.no_truncation()
    if not start_token:
        tok.post_processor = TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]"
    )


def subword_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer that splits "photo" into "ph" + "##oto" (as BPE splits rarer words), with
    ``[CLS] ... [SEP]`` around every text: for context initialisations whose words are several tokens."""
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "a",
        "ph",
        "##oto",
        "of",
        "red",
        "circle",
        "blue",
        "square",
        ".",
    ]
    tok = Tokenizer(WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]"
    )


def _small(vocab: int, **text) -> tuple[dict, dict]:
    t = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    t.update(text)
    v = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    return t, v


def make_clip(folder: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    torch.manual_seed(0)
    tokenizer = tokenizer or _hf_tokenizer(16)
    t, v = _small(len(tokenizer), eos_token_id=3, bos_token_id=2, pad_token_id=0)
    model = CLIPModel(CLIPConfig(text_config=t, vision_config=v, projection_dim=24)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def make_siglip(folder: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = _hf_tokenizer(16, start_token=False)
    t, v = _small(len(tokenizer), pad_token_id=0)
    model = SiglipModel(SiglipConfig(text_config=t, vision_config=v)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_cross_encoder(folder: Path, hidden: int = 32) -> Path:
    """A one-layer BERT sequence classifier with one logit (a cross-encoder reranker's shape), with the
    word tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = _hf_tokenizer(64)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        num_labels=1,
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_bert(folder: Path, words: list[str], layers: int = 1, heads: int = 2) -> Path:
    """A BERT encoder of width 16 with random weights (seed 0) and a WordPiece tokenizer over ``words``
    (the special tokens first), saved as transformers saves them."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder
