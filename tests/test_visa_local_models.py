"""Local transformers backends on tiny models built offline: a causal LM chat and a cross-encoder reranker."""

import pytest
import torch
from transformers import BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from hf_tiny import WORDS, _hf_tokenizer, make_cross_encoder
from vlret.rerank.backends.hf_local import HFChat
from vlret.rerank.backends.relevance import CrossEncoderReranker

TEMPLATE = "{% for m in messages %}[CLS] {{ m['content'] }} [SEP]{% endfor %}"


def test_hf_chat_generates_and_counts_tokens(tmp_path):
    torch.manual_seed(0)
    tokenizer = _hf_tokenizer(64)
    tokenizer.chat_template = TEMPLATE
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    chat = HFChat(str(tmp_path), device="cpu")
    reply = chat.chat("a red circle", max_tokens=5)
    assert isinstance(reply, str)
    assert chat.usage.calls == 1 and chat.usage.completion_tokens == 5
    assert chat.usage.prompt_tokens == len(tokenizer("[CLS] a red circle [SEP]")["input_ids"])
    assert chat.chat("a red circle", max_tokens=5) == reply  # greedy: deterministic


def test_cross_encoder_scores_are_raw_logits(tmp_path):
    from transformers import AutoTokenizer

    make_cross_encoder(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    pairs = [(WORDS[0], WORDS[1]), (WORDS[2], WORDS[3])]
    scores = CrossEncoderReranker(str(tmp_path), device="cpu").score(pairs)
    with torch.no_grad():
        batch = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt")
        expected = model(**batch).logits[:, 0].tolist()
    assert scores == pytest.approx(expected, abs=1e-5)
