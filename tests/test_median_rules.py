"""The median rank each field reports (issue: results comparable with the papers' tables): image-text papers
take floor(median) + 1 (VSE++, SCAN); CLIP4Clip takes median + 1 unfloored, and in its multi-caption path
torch.median, the lower of the two middle ranks. Expected values are worked by hand below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.evaluate import evaluate_scores
from vlret.evaluate.metrics import MEDIAN_RULES, median_rank


@pytest.mark.parametrize(
    "ranks, floor, clip4clip, lower",
    [
        # 0-based [0, 1, 2, 5]: the middle ranks are 1 and 2, median 1.5
        ([0, 1, 2, 5], 2.0, 2.5, 2.0),
        # [0, 0, 3, 7]: middle 0 and 3, median 1.5: floor 1 + 1, unfloored 2.5, the lower middle 0 + 1
        ([7, 0, 3, 0], 2.0, 2.5, 1.0),
        # an odd count has one middle: every rule agrees
        ([9, 0, 3], 4.0, 4.0, 4.0),
    ],
)
def test_median_rules_by_hand(ranks, floor, clip4clip, lower):
    assert median_rank(np.array(ranks), "floor") == floor
    assert median_rank(np.array(ranks), "clip4clip") == clip4clip
    assert median_rank(np.array(ranks), "clip4clip-lower") == lower
    with pytest.raises(ValueError, match="median rule must be one of"):
        median_rank(np.array(ranks), "mean")


def _dataset(suffix: str, captions_per_item: int) -> RetrievalDataset:
    items = [Item(f"v{n}", f"v{n}{suffix}", "test") for n in range(4)]
    captions = [Caption(f"caption {c} of v{n}", f"v{n}") for n in range(4) for c in range(captions_per_item)]
    return RetrievalDataset(items, captions, Path("."), "hand-made", "test")


def _scores(ranks: list[int], captions_per_item: int) -> np.ndarray:
    """A caption scores 1 with its own item; when its rank is to be r > 0, every other item scores 2."""
    scores = np.zeros((len(ranks), 4), np.float32)
    for c, rank in enumerate(ranks):
        own = c // captions_per_item
        scores[c, own] = 1.0
        if rank:
            scores[c, [n for n in range(4) if n != own]] = 2.0
    return scores


def test_video_results_take_clip4clips_median_and_say_so():
    # two captions per video, text->video ranks [0, 0, 0, 0, 3, 3, 3, 3]: the middle ranks are 0 and 3
    ranks = [0, 0, 0, 0, 3, 3, 3, 3]
    scores = _scores(ranks, 2)
    video = evaluate_scores(scores, _dataset(".mp4", 2), direction="t2i")
    assert video["metrics"]["t2i_medr"] == 1.0  # the lower middle, 0 + 1 (torch.median)
    assert video["protocol"]["median_rank"]["t2i"] == MEDIAN_RULES["clip4clip-lower"]
    image = evaluate_scores(scores, _dataset(".jpg", 2), direction="t2i")
    assert image["metrics"]["t2i_medr"] == 2.0  # floor(1.5) + 1
    assert image["protocol"]["median_rank"]["t2i"] == MEDIAN_RULES["floor"]


def test_one_caption_per_video_takes_the_unfloored_median():
    scores = _scores([0, 0, 3, 3], 1)  # middle ranks 0 and 3: 1.5 + 1
    result = evaluate_scores(scores, _dataset(".mp4", 1))
    assert result["metrics"]["t2i_medr"] == 2.5
    assert result["protocol"]["median_rank"] == {
        "t2i": MEDIAN_RULES["clip4clip"],
        "i2t": MEDIAN_RULES["clip4clip"],
    }
    assert evaluate_scores(scores, _dataset(".png", 1))["metrics"]["t2i_medr"] == 2.0


# ----- video->text ranks: one entry per other video (CLIP4Clip), or every wrong caption --------------------


def _two_videos(suffix: str) -> RetrievalDataset:
    items = [Item(f"v{n}", f"v{n}{suffix}", "test") for n in range(2)]
    captions = [Caption(f"caption {c} of v{n}", f"v{n}") for n in range(2) for c in range(2)]
    return RetrievalDataset(items, captions, Path("."), "hand-made", "test")


# the issue's example: captions of videos [0, 0, 1, 1]
ISSUE_SCORES = np.array([[0.5, 0.1], [0.4, 0.2], [0.9, 0.95], [0.8, 0.7]])


def test_video_to_text_ranks_by_video_as_clip4clip_by_hand():
    from vlret.evaluate.ranking import matrix_block_fn, rank_blocks

    # video 0: its best caption scores .5; video 1's captions score .9 and .8 with it, best .9 >= .5: rank 1
    #   (by captions both .9 and .8 are above .5: rank 2). video 1: own best .95; video 0's best .2: rank 0.
    text_item = np.array([0, 0, 1, 1])
    for chunk in (1, 3, 512):  # blocks of one row, uneven blocks, all at once
        block_fn = matrix_block_fn(ISSUE_SCORES)
        assert rank_blocks(block_fn, text_item, 2, chunk, item_rule="items").i2t.tolist() == [1, 0]
        assert rank_blocks(block_fn, text_item, 2, chunk, item_rule="captions").i2t.tolist() == [2, 0]
    # a tie with another video's best counts against the model, as every rank here does
    tied = np.array([[0.5, 0.1], [0.4, 0.2], [0.5, 0.95], [0.1, 0.7]])
    assert rank_blocks(matrix_block_fn(tied), text_item, 2, item_rule="items").i2t.tolist() == [1, 0]


def test_video_results_rank_by_video_and_say_so_with_the_other_rule_on_request():
    video = evaluate_scores(ISSUE_SCORES, _two_videos(".mp4"))
    # ranks [1, 0] -> 1-based [2, 1]: MnR 1.5, R@1 one of two (stored as a fraction)
    assert video["metrics"]["i2t_meanr"] == 1.5 and video["metrics"]["i2t_r1"] == 0.5
    assert video["protocol"]["i2t_rank"].startswith("items")
    by_captions = evaluate_scores(ISSUE_SCORES, _two_videos(".mp4"), item_rule="captions")
    assert by_captions["metrics"]["i2t_meanr"] == 2.0  # ranks [2, 0] -> [3, 1]
    assert by_captions["protocol"]["i2t_rank"].startswith("captions")
    image = evaluate_scores(ISSUE_SCORES, _two_videos(".jpg"))
    assert image["metrics"]["i2t_meanr"] == 2.0 and image["protocol"]["i2t_rank"].startswith("captions")
    # text->video is the same under both rules
    assert video["metrics"]["t2i_r1"] == by_captions["metrics"]["t2i_r1"]
