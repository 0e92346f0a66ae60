"""VSE-infinity's word-level text size augmentation (AVSE spec section 3)."""

from __future__ import annotations

import pytest
import torch

from vlret.models import create_model
from vlret.models.word_augment import WordPieces, augment_words, word_numbers

# [PAD] [CLS] [SEP] [MASK] then words; "##b" and "##d" continue the word before them
VOCAB = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "a": 4, "##b": 5, "c": 6, "##d": 7, "e": 8}
PIECES = WordPieces.from_vocab(VOCAB, [0, 1, 2, 3], mask_id=3, pad_id=0, wordpiece=True)
# [CLS] e a ##b c ##d ##d ##d [SEP]: three words of 1, 2 and 4 tokens, so that the length of what survives
# tells which words survived (every subset of {1, 2, 4} has its own sum)
ROW = [1, 8, 4, 5, 6, 7, 7, 7, 2]
WORDS = [[8], [4, 5], [6, 7, 7, 7]]


def _batch(rows: int) -> dict[str, torch.Tensor]:
    ids = torch.tensor([ROW + [0, 0]] * rows)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_word_numbers_by_hand():
    batch = _batch(1)
    numbers = word_numbers(batch["input_ids"], batch["attention_mask"].bool(), PIECES)
    assert numbers.tolist() == [[-1, 0, 1, 1, 2, 2, 2, 2, -1, -1, -1]]


def test_rate_zero_changes_nothing():
    batch = _batch(3)
    out = augment_words(batch, PIECES, 0.0)
    assert torch.equal(out["input_ids"], batch["input_ids"])


def _outcomes(out_ids: list[int]) -> list[str]:
    """How each word came out, read back from the augmented row: 'kept', 'mask' (all [MASK]), 'random'
    (other non-special ids) or 'deleted'."""
    real = [i for i in out_ids if i != 0]
    assert real[0] == 1 and real[-1] == 2, "specials are never touched"
    body = real[1:-1]
    survivors = [s for s in range(8) if sum(len(w) for n, w in enumerate(WORDS) if s >> n & 1) == len(body)]
    assert len(survivors) == 1
    outcomes, at = [], 0
    for n, word in enumerate(WORDS):
        if not survivors[0] >> n & 1:
            outcomes.append("deleted")
            continue
        piece, at = body[at : at + len(word)], at + len(word)
        if piece == word:
            outcomes.append("kept")
        elif all(i == 3 for i in piece):
            outcomes.append("mask")
        else:
            assert 3 not in piece, "a word is masked whole or not at all"
            outcomes.append("random")
    return outcomes


def test_every_word_is_kept_masked_randomised_or_deleted_whole():
    torch.manual_seed(0)
    out = augment_words(_batch(4000), PIECES, 1.0)
    counts = {"kept": 0, "mask": 0, "random": 0, "deleted": 0}
    for row, mask in zip(out["input_ids"].tolist(), out["attention_mask"].tolist(), strict=True):
        assert mask == [1 if i != 0 else 0 for i in row]  # packed to the front, mask = real tokens
        assert row == [i for i in row if i != 0] + [0] * row.count(0)
        for outcome in _outcomes(row):
            counts[outcome] += 1
    total = sum(counts.values())
    # at rate 1 every word is perturbed: 50% mask, 10% random (a random id may equal the word: rare), 40% gone
    assert counts["kept"] / total < 0.01
    assert abs(counts["mask"] / total - 0.5) < 0.02
    assert abs((counts["random"] + counts["kept"]) / total - 0.1) < 0.015
    assert abs(counts["deleted"] / total - 0.4) < 0.02


def test_the_rate_is_per_word():
    torch.manual_seed(1)
    out = augment_words(_batch(4000), PIECES, 0.2)
    outcomes = [o for row in out["input_ids"].tolist() for o in _outcomes(row)]
    touched = sum(o != "kept" for o in outcomes) / len(outcomes)
    assert abs(touched - 0.2) < 0.015


def test_random_tokens_are_never_special():
    torch.manual_seed(2)
    out = augment_words(_batch(2000), PIECES, 1.0)
    ids = out["input_ids"][out["attention_mask"].bool()]
    assert (ids[(ids != 1) & (ids != 2) & (ids != 3)] >= 4).all()


def test_minilm_words_match_the_tokenizers_own_word_ids():
    model = create_model(
        "composed", image_tower="tiny-vit", text_tower="minilm", embed_dim=8, text_word_augment=0.2
    )
    tokenizer = model.text_tower.tokenizer
    texts = ["a zebrafish swims beside unbelievably tall giraffes", "two dogs"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    numbers = word_numbers(encoded["input_ids"], encoded["attention_mask"].bool(), model.word_pieces)
    for row in range(len(texts)):
        expected = [-1 if w is None else w for w in encoded.word_ids(row)]
        assert numbers[row].tolist() == expected
    assert model.word_pieces.mask_id == tokenizer.mask_token_id


def test_augmented_captions_bypass_the_frozen_memo_and_evaluation_is_untouched():
    model = create_model(
        "composed", image_tower="tiny-vit", text_tower="minilm", embed_dim=8, text_word_augment=0.5
    )
    batch = model.tokenize(["a red circle above a blue square", "two green triangles"])
    torch.manual_seed(0)
    model.train()
    model.encode_texts(batch)
    assert len(model._text_memo.rows) == 0
    model.eval()
    first = model.encode_texts(batch).embeds
    assert len(model._text_memo.rows) == 2
    torch.testing.assert_close(model.encode_texts(batch).embeds, first)


def test_bigru_masks_with_unk():
    model = create_model(
        "composed",
        captions=["a red circle", "a blue square"],
        image_tower="tiny-vit",
        text_tower="bigru",
        embed_dim=8,
        text_options={"word_dim": 4, "hidden": 8, "min_count": 1},
        text_word_augment=0.5,
    )
    pieces = model.word_pieces
    vocab = model.text_tower.tokenizer.get_vocab()
    assert pieces.mask_id == vocab["<unk>"] and not pieces.continues_word.any()
    assert pieces.special[[vocab["<pad>"], vocab["<start>"], vocab["<end>"]]].all()


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_the_rate_must_be_a_probability_below_one(rate):
    with pytest.raises(ValueError, match="text_word_augment"):
        create_model("composed", image_tower="tiny-vit", text_tower="minilm", text_word_augment=rate)
