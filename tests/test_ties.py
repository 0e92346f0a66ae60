"""Tie rules (issue 38, section 1): ours (pessimistic), optimistic, and the released codes' (SCAN's argsort,
CLIP4Clip's compute_metrics and multi-sentence argsort). Every expected figure is worked out by hand in the
comments, or taken from the issue's worked example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlret.evaluate.metrics import retrieval_metrics, tie_entries
from vlret.evaluate.ranking import matrix_block_fn, rank_blocks


def _ranks(scores, text_to_item, rule, item_rule="captions", chunk=2):
    scores = np.asarray(scores, dtype=np.float32)
    return rank_blocks(
        matrix_block_fn(scores),
        np.asarray(text_to_item),
        scores.shape[1],
        chunk,
        None,
        item_rule,
        (rule, rule),
    )


# the issue's example, text -> video, one text per video: row 0 ties its own .5 with video 1's .5
CLIP4CLIP = [[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.1, 0.2, 0.8]]


def test_the_issues_clip4clip_example():
    """compute_metrics keeps one entry per tied position: row 0 gives entries 0 and 1, rows 1 and 2 one
    entry 0 each: 4 entries, R@1 3/4 = 75.0, mean rank (1 + 2 + 1 + 1) / 4 = 1.25. Ours: ranks [1, 0, 0],
    R@1 66.67, mean rank 4/3."""
    entries = _ranks(CLIP4CLIP, [0, 1, 2], "entries", "items")
    assert entries.t2i.tolist() == [0, 0, 0] and entries.t2i_ties.tolist() == [1, 0, 0]
    assert tie_entries(entries.t2i, entries.t2i_ties).tolist() == [0, 1, 0, 0]
    metrics = retrieval_metrics(entries.t2i, None, ("clip4clip", "clip4clip"), entries.t2i_ties)
    assert metrics["t2i_r1"] == pytest.approx(0.75) and metrics["t2i_meanr"] == pytest.approx(1.25)
    ours = _ranks(CLIP4CLIP, [0, 1, 2], "pessimistic", "items")
    assert ours.t2i.tolist() == [1, 0, 0] and ours.t2i_ties is None
    metrics = retrieval_metrics(ours.t2i, None)
    assert metrics["t2i_r1"] == pytest.approx(2 / 3) and metrics["t2i_meanr"] == pytest.approx(4 / 3)
    assert _ranks(CLIP4CLIP, [0, 1, 2], "optimistic", "items").t2i.tolist() == [0, 0, 0]


# texts x images, texts 0 and 1 of image 0, texts 2 and 3 of image 1
SCAN = [[0.5, 0.6], [0.1, 0.1], [0.5, 0.4], [0.2, 0.6]]


@pytest.mark.parametrize(
    "rule, t2i, i2t",
    [
        # t0: .6 above its .5 (every rule 1). t1: .1 ties with image 1: pessimistic 1, optimistic 0, SCAN
        # (higher index first: image 1 before image 0) 1. t2: .5 above its .4 (1). t3: its .6 first (0).
        # image 0's column [.5, .1, .5, .2]: best own t0 (.5, index 0), wrong t2 ties at index 2: SCAN puts
        # t2 first (1), pessimistic 1, optimistic 0. image 1's column [.6, .1, .4, .6]: best own t3 (.6,
        # index 3), wrong t0 ties at index 0: SCAN puts t3 first (0), pessimistic 1, optimistic 0.
        ("pessimistic", [1, 1, 1, 0], [1, 1]),
        ("optimistic", [1, 0, 1, 0], [0, 0]),
        ("last-first", [1, 1, 1, 0], [1, 0]),
        # lower index first: t1's own image 0 comes before image 1 (0); image 0: own t0 (index 0) before t2 (0);
        # image 1: t0 (index 0) before own t3 (1)
        ("first-first", [1, 0, 1, 0], [0, 1]),
    ],
)
def test_scan_style_ties_by_hand(rule, t2i, i2t):
    for chunk in (1, 2, 4):  # blocks of any size give the same counts
        ranks = _ranks(SCAN, [0, 0, 1, 1], rule, chunk=chunk)
        assert ranks.t2i.tolist() == t2i and ranks.i2t.tolist() == i2t


def test_a_wrong_text_tied_between_two_own_texts_counts_only_pessimistically():
    """image 0 owns texts 0 and 2, both at .5; wrong text 1 (image 1's) ties at .5 between them: SCAN's
    order (higher index first) reads own text 2 first, lower-first reads own text 0 first: 0 both ways;
    pessimistic counts it (1)."""
    scores = [[0.5, 0.1], [0.5, 0.9], [0.5, 0.2]]
    for rule, rank in (("pessimistic", 1), ("last-first", 0), ("first-first", 0), ("optimistic", 0)):
        assert _ranks(scores, [0, 1, 0], rule).i2t.tolist()[0] == rank, rule


def test_video_to_text_entries_by_items():
    """texts x videos; t0, t1 of v0, t2 of v1, t3 of v2. Each owner's best per video: v0 [.9, .8, .1],
    v1 [.7, .7, .2], v2 [.1, .7, .5]. Video 1's own best .7 (t2); v0's .8 is above, v2's .7 ties: entries 1
    and 2 (CLIP4Clip's compute_metrics on the video x video matrix: row [.8, .7, .7], diagonal .7 at sorted
    positions 1 and 2); pessimistic 2; optimistic 1. Videos 0 and 2 rank 0. Entries [0, 1, 2, 0]: R@1 2/4,
    mean rank (1 + 2 + 3 + 1) / 4 = 1.75. Text -> video, multi-sentence (lower index first): t2's .7 ties
    with v0's .7 at a lower index: 1."""
    scores = [[0.9, 0.2, 0.1], [0.3, 0.8, 0.1], [0.7, 0.7, 0.2], [0.1, 0.7, 0.5]]
    owners = [0, 0, 1, 2]
    entries = _ranks(scores, owners, "entries", "items")
    assert entries.i2t.tolist() == [0, 1, 0] and entries.i2t_ties.tolist() == [0, 1, 0]
    metrics = retrieval_metrics(entries.t2i, entries.i2t, ("clip4clip", "clip4clip"), None, entries.i2t_ties)
    assert metrics["i2t_r1"] == pytest.approx(0.5) and metrics["i2t_meanr"] == pytest.approx(1.75)
    assert _ranks(scores, owners, "pessimistic", "items").i2t.tolist() == [0, 2, 0]
    assert _ranks(scores, owners, "optimistic", "items").i2t.tolist() == [0, 1, 0]
    assert _ranks(scores, owners, "first-first", "items").t2i.tolist() == [0, 1, 1, 1]


def test_the_released_rule_follows_the_protocols_code_and_is_recorded(tmp_path, capsys):
    """From the command line: a score file of the example above on a one-caption video split ranks by
    CLIP4Clip's compute_metrics under --ties released; the result's protocol block and the results table
    say so."""
    from vlret.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    rows = ["video,caption,split"] + [f"videos/v{n}.mp4,caption {n},test" for n in range(3)]
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    np.save(tmp_path / "scores.npy", np.asarray(CLIP4CLIP, dtype=np.float32))
    base = ["eval", "--data", str(tmp_path / "clips.csv"), "--path-column", "video", "--scores"]
    base += [str(tmp_path / "scores.npy"), "--split", "test"]
    for ties, r1 in (("pessimistic", 66.7), ("released", 75.0), ("optimistic", 100.0)):
        out = tmp_path / f"{ties}.json"
        assert main([*base, "--ties", ties, "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["metrics"]["t2i_r1"] == pytest.approx(r1 / 100, abs=1e-3)
        assert result["protocol"]["ties"]["rule"] == ties
    released = json.loads((tmp_path / "released.json").read_text())["protocol"]["ties"]
    assert "compute_metrics" in released["t2i"] and "compute_metrics" in released["i2t"]
    capsys.readouterr()
    assert (
        main(["results", "table", str(tmp_path / "released.json"), str(tmp_path / "pessimistic.json")]) == 0
    )
    table = capsys.readouterr().out
    assert "ties released" in table and table.count("ties ") == 1
