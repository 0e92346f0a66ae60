"""Video dataset readers on small hand-written files."""

from __future__ import annotations

import json

import pytest

from vlret.data.msrvtt import read_msrvtt
from vlret.errors import DataError


@pytest.fixture
def msrvtt(tmp_path):
    data = {
        "videos": [
            {"video_id": "video0", "split": "train"},
            {"video_id": "video1", "split": "validate"},
            {"video_id": "video2", "split": "test"},
            {"video_id": "video3", "split": "test"},
        ],
        "sentences": [
            {"video_id": "video0", "caption": "a man  sings", "sen_id": 0},
            {"video_id": "video0", "caption": "someone is singing", "sen_id": 1},
            {"video_id": "video1", "caption": "a dog runs", "sen_id": 2},
            {"video_id": "video2", "caption": "cars race", "sen_id": 3},
            {"video_id": "video2", "caption": "a race of cars", "sen_id": 4},
            {"video_id": "video3", "caption": "a cat sleeps", "sen_id": 5},
        ],
    }
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    (tmp_path / "train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo3\n")
    (tmp_path / "jsfusion.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7579,video2,a car race\n")
    return tmp_path


def test_official_split_with_all_sentences(msrvtt):
    data = read_msrvtt(msrvtt / "MSRVTT_data.json")
    assert [(i.id, i.split, i.path) for i in data.items] == [
        ("video0", "train", "video0.mp4"),
        ("video1", "val", "video1.mp4"),
        ("video2", "test", "video2.mp4"),
        ("video3", "test", "video3.mp4"),
    ]
    assert [c.text for c in data.captions if c.item_id == "video0"] == ["a man sings", "someone is singing"]
    assert data.media_root == msrvtt / "videos" / "all"


def test_9k_train_and_1k_a_test(msrvtt):
    data = read_msrvtt(msrvtt / "MSRVTT_data.json", msrvtt / "train.9k.csv", msrvtt / "jsfusion.csv")
    assert [(i.id, i.split) for i in data.items] == [
        ("video2", "test"),
        ("video0", "train"),
        ("video1", "train"),
        ("video3", "train"),
    ]
    # the test video has the csv's one sentence, not the json's two
    assert [c.text for c in data.captions if c.item_id == "video2"] == ["a car race"]
    assert len(data.captions) == 1 + 2 + 1 + 1


def test_bad_msrvtt_files_name_the_place(msrvtt):
    (msrvtt / "overlap.csv").write_text("video_id\nvideo2\n")
    with pytest.raises(DataError, match="overlap.csv: line 2: video 'video2' is also a test video"):
        read_msrvtt(msrvtt / "MSRVTT_data.json", msrvtt / "overlap.csv", msrvtt / "jsfusion.csv")
    (msrvtt / "unknown.csv").write_text("video_id\nvideo9\n")
    with pytest.raises(DataError, match="unknown.csv: line 2: video 'video9' is not in MSRVTT_data.json"):
        read_msrvtt(msrvtt / "MSRVTT_data.json", msrvtt / "unknown.csv")
    (msrvtt / "nocol.csv").write_text("vid\nvideo0\n")
    with pytest.raises(DataError, match="no column 'video_id'"):
        read_msrvtt(msrvtt / "MSRVTT_data.json", msrvtt / "nocol.csv")
    bad = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    bad["sentences"][3]["caption"] = "  "
    (msrvtt / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad.json: sentences\[3\]"):
        read_msrvtt(msrvtt / "bad.json")
