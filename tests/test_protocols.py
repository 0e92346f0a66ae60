"""Protocols: caption rule, folds averaged, gallery-size checks, and the score-matrix path."""

from pathlib import Path

import numpy as np
import pytest

from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError
from vlret.evaluate import PROTOCOLS, evaluate_scores
from vlret.evaluate.protocols import Protocol, prepare


def dataset(captions_per_item, split="test"):
    items = [Item(f"i{k}", f"i{k}.jpg", split) for k in range(len(captions_per_item))]
    caps = [Caption(f"c{k}.{j}", f"i{k}") for k, n in enumerate(captions_per_item) for j in range(n)]
    return RetrievalDataset(items, caps, media_root=Path("."), source="hand")


def test_published_protocol_definitions():
    assert (PROTOCOLS["flickr30k-1k"].expected_items, PROTOCOLS["flickr30k-1k"].captions_per_item) == (
        1000,
        5,
    )
    assert (PROTOCOLS["coco-5k"].expected_items, PROTOCOLS["coco-5k"].folds) == (5000, 1)
    assert (
        PROTOCOLS["coco-1k"].expected_items,
        PROTOCOLS["coco-1k"].folds,
        PROTOCOLS["coco-1k"].captions_per_item,
    ) == (5000, 5, 5)


FOLDS_S = np.array(
    [
        [0.9, 0.1, 0.95, 0.0],
        [0.2, 0.5, 0.0, 0.0],
        [0.0, 0.0, 0.3, 0.6],
        [0.0, 0.0, 0.1, 0.7],
    ],
    dtype=np.float32,
)


def test_folds_average_and_differ_from_one_gallery(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "two-folds", Protocol("two-folds", "test", 4, 1, 2))
    ds = dataset([1, 1, 1, 1])
    folded = evaluate_scores(FOLDS_S, ds, "two-folds")
    # fold 0 (items 0,1): both texts hit -> 1.0; fold 1: text 2 loses to item 3 (0.6 > 0.3) -> 0.5; mean 0.75
    assert folded["metrics"]["t2i_r1"] == pytest.approx(0.75)
    assert [f["t2i_r1"] for f in folded["folds"]] == [1.0, 0.5]
    assert folded["metrics"]["i2t_r1"] == 1.0
    assert folded["counts"]["pairs_scored"] == 2 * (2 * 2)
    whole = evaluate_scores(FOLDS_S, ds, "generic")
    # one gallery: text 0 also loses to item 2 (0.95), text 2 to item 3 -> 2 of 4 hits
    assert whole["metrics"]["t2i_r1"] == 0.5


def test_first_five_captions_rule_ignores_extra_rows(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "five", Protocol("five", "test", 2, 5, 1))
    ds = dataset([6, 5])  # item 0 has a 6th caption (row 5) that the rule drops
    scores = np.zeros((11, 2), np.float32)
    scores[:5, 0] = 1.0
    scores[6:, 1] = 1.0
    scores[5] = [0.0, 1.0]  # the 6th caption of item 0 prefers item 1: would be a miss if kept
    result = evaluate_scores(scores, ds, "five")
    assert result["metrics"]["t2i_r1"] == 1.0
    assert result["counts"]["captions"] == 10
    assert result["protocol"]["caption_rule"] == "first 5 captions of each item"
    generic = evaluate_scores(scores, ds, "generic")
    assert generic["metrics"]["t2i_r1"] == pytest.approx(10 / 11)


def test_gallery_size_is_checked():
    with pytest.raises(DataError, match="flickr30k-1k expects 1000 items in the split, found 3"):
        evaluate_scores(np.zeros((15, 3), np.float32), dataset([5, 5, 5]), "flickr30k-1k")


def test_score_matrix_shape_is_checked():
    with pytest.raises(DataError, match=r"shape \(3, 3\); expected \(captions, items\) = \(15, 3\)"):
        evaluate_scores(np.zeros((3, 3), np.float32), dataset([5, 5, 5]), source="s.npy")


def test_too_few_captions_for_rule():
    with pytest.raises(DataError, match="item 'i1'.*needs 5 captions per item, found 4"):
        prepare(dataset([5, 4]), Protocol("five", "test", None, 5, 1))


def test_text_to_visual_only_direction():
    result = evaluate_scores(FOLDS_S, dataset([1, 1, 1, 1]), direction="t2i")
    assert "i2t_r1" not in result["metrics"] and result["counts"]["i2t_queries"] == 0


def test_first_1k_validates_on_the_first_thousand_items():
    from vlret.data.records import Caption, Item, RetrievalDataset
    from vlret.evaluate.protocols import get_protocol, prepare

    items = [Item(f"i{n}", f"i{n}.png", "val") for n in range(1003)]
    # captions listed out of item order: the rows kept must still point into this order
    captions = [Caption(f"c{n}-{k}", f"i{n}") for k in range(6) for n in reversed(range(1003))]
    data = RetrievalDataset(items, captions, None, "mem", "test")
    selected, keep, folds = prepare(data, get_protocol("first-1k"))
    assert len(selected.items) == 1000 and len(selected.captions) == 5000
    assert [captions[c].text for c in keep[:5]] == [f"c0-{k}" for k in range(5)]
    assert all(captions[c].item_id == selected.captions[n].item_id for n, c in enumerate(keep))
    assert folds[0].item_stop == 1000 and folds[0].caption_stop == 5000
    few = [Caption(f"c{n}-{k}", f"i{n}") for n in range(10) for k in range(5)]
    small, _, _ = prepare(RetrievalDataset(items[:10], few, None, "mem", "test"), get_protocol("first-1k"))
    assert len(small.items) == 10  # fewer than 1,000 items: all of them
