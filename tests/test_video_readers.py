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


def test_msrvtt_folder_is_detected_and_uses_the_split_lists(msrvtt):
    from vlret.data import detect_format, load_dataset

    (msrvtt / "train.9k.csv").rename(msrvtt / "MSRVTT_train.9k.csv")
    assert detect_format(msrvtt) == "msrvtt" and detect_format(msrvtt / "MSRVTT_data.json") == "msrvtt"
    assert [c.text for c in load_dataset(msrvtt).captions if c.item_id == "video2"] == [
        "cars race",
        "a race of cars",
    ]
    (msrvtt / "jsfusion.csv").rename(msrvtt / "MSRVTT_JSFUSION_test.csv")
    data = load_dataset(msrvtt)
    assert data.splits == ["test", "train"]
    assert [c.text for c in data.captions if c.item_id == "video2"] == ["a car race"]
    official = load_dataset(msrvtt, split_lists=False)
    assert official.splits == ["train", "val", "test"]


def _moment(video, text, start=0):
    return {"video": video, "description": text, "times": [[start, start + 1]], "annotation_id": 0}


def test_didemo_paragraphs_join_a_videos_descriptions_in_file_order(tmp_path):
    from vlret.data import detect_format, load_dataset

    train = [
        _moment("a.mov", "a man walks in", 2),
        _moment("b.mov", "a dog barks"),
        _moment("a.mov", "he sits  down", 0),
    ]
    (tmp_path / "train_data.json").write_text(json.dumps(train))
    (tmp_path / "test_data.json").write_text(json.dumps([_moment("c.mov", "rain falls")]))
    assert detect_format(tmp_path) == "didemo"
    data = load_dataset(tmp_path)
    assert [(i.id, i.path, i.split) for i in data.items] == [
        ("a.mov", "a.mov", "train"),
        ("b.mov", "b.mov", "train"),
        ("c.mov", "c.mov", "test"),
    ]
    assert [(c.item_id, c.text) for c in data.captions] == [
        ("a.mov", "a man walks in he sits down"),
        ("b.mov", "a dog barks"),
        ("c.mov", "rain falls"),
    ]
    assert data.media_root == tmp_path / "videos"
    sentences = load_dataset(tmp_path, paragraph=False, suffix=".mp4", splits=["train"])
    assert [c.text for c in sentences.captions] == ["a man walks in", "he sits down", "a dog barks"]
    assert sentences.items[0].path == "a.mp4"


def test_didemo_bad_moment_is_named_or_skipped(tmp_path):
    from vlret.data import load_dataset

    (tmp_path / "test_data.json").write_text(json.dumps([_moment("a.mov", "x"), {"video": "b.mov"}]))
    with pytest.raises(DataError, match=r"test_data\.json.*\[1\].*description"):
        load_dataset(tmp_path)
    skipped = load_dataset(tmp_path, on_error="skip")
    assert [i.id for i in skipped.items] == ["a.mov"] and skipped.skipped[0].record == "[1]"


def test_msvd_reads_every_caption_from_the_pickle_or_the_text_file(tmp_path):
    import pickle

    from vlret.data import detect_format, load_dataset

    captions = {
        "vidA": [["a", "cat", "plays"], ["the", "cat", "is", "playing"]],
        "vidB": [["a", "man", "cooks"]],
    }
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (tmp_path / "train_list.txt").write_text("vidA\n")
    (tmp_path / "test_list.txt").write_text("vidB\n\n")
    assert detect_format(tmp_path) == "msvd"
    data = load_dataset(tmp_path)
    assert [(i.id, i.path, i.split) for i in data.items] == [
        ("vidA", "vidA.avi", "train"),
        ("vidB", "vidB.avi", "test"),
    ]
    assert [(c.item_id, c.text) for c in data.captions] == [
        ("vidA", "a cat plays"),
        ("vidA", "the cat is playing"),
        ("vidB", "a man cooks"),
    ]
    assert data.media_root == tmp_path / "YouTubeClips"

    text = tmp_path / "text"
    text.mkdir()
    (text / "captions.txt").write_text(
        "# comment\nvidA a cat plays\nvidB a man cooks\nvidA the cat is playing\n"
    )
    (text / "test_list.txt").write_text("vidA\nvidC\n")
    with pytest.raises(DataError, match=r"test_list\.txt.*line 2.*'vidC' has no caption"):
        load_dataset(text)
    assert [c.text for c in load_dataset(text, on_error="skip").captions] == [
        "a cat plays",
        "the cat is playing",
    ]


def test_msvd_pickle_with_a_class_reference_is_refused(tmp_path):
    import pickle
    from collections import OrderedDict

    from vlret.data import load_dataset

    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(OrderedDict(vidA=[["a"]])))
    (tmp_path / "test_list.txt").write_text("vidA\n")
    with pytest.raises(DataError, match=r"raw-captions\.pkl.*refusing collections\.OrderedDict"):
        load_dataset(tmp_path)


def test_lsmdc_clips_live_in_their_movies_folder(tmp_path):
    from vlret.data import detect_format, load_dataset

    rows = [
        "0001_American_Beauty_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t00.00.51.500\t00.00.54.500\tSOMEONE looks out.",
        "0001_American_Beauty_00.01.00.000-00.01.02.000\t1\t2\t1\t2\tSOMEONE smiles.",
    ]
    (tmp_path / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "LSMDC16_annos_training.csv").write_text(
        "1004_Juno_00.00.01.000-00.00.02.000\t1\t2\t1\t2\tJuno runs.\n"
    )
    assert detect_format(tmp_path) == "lsmdc"
    data = load_dataset(tmp_path)
    assert [(i.path, i.split) for i in data.items] == [
        ("1004_Juno/1004_Juno_00.00.01.000-00.00.02.000.avi", "train"),
        ("0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.129.avi", "test"),
        ("0001_American_Beauty/0001_American_Beauty_00.01.00.000-00.01.02.000.avi", "test"),
    ]
    assert [c.text for c in data.captions] == ["Juno runs.", "SOMEONE looks out.", "SOMEONE smiles."]
    (tmp_path / "LSMDC16_annos_val.csv").write_text("0002_X_1-2\t1\t2\n")
    with pytest.raises(DataError, match=r"LSMDC16_annos_val\.csv.*line 1.*6 tab-separated"):
        load_dataset(tmp_path)


def test_video_results_get_their_own_table_with_median_and_mean_rank():
    from vlret.evaluate.results import results_table

    image = {
        "metrics": {"t2i_r1": 0.5, "rsum": 3.0},
        "protocol": {"name": "generic"},
        "data": {"media": "image"},
    }
    clips = {
        "metrics": {"t2i_r1": 0.25, "t2i_medr": 3.0, "t2i_meanr": 7.5, "i2t_r1": 0.5, "i2t_medr": 2.0},
        "protocol": {"name": "generic"},
        "data": {"media": "video"},
    }
    first, second = results_table([image, clips], ["img", "vid"]).split("\n\n")
    assert "| img |" in first and "vid" not in first
    assert second.splitlines()[0].startswith("| run | protocol | T→V R@1 | R@5 | R@10 | MdR | MnR | V→T R@1")
    assert second.splitlines()[2] == "| vid | generic | 25.0 | – | – | 3.0 | 7.5 | 50.0 | – | – | 2.0 | – |"
