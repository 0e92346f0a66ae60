"""Readers of every annotation format, with hand-written files and hand-counted expectations."""

import numpy as np
import pytest

from conftest import write_json
from vlret.data import detect_format, load_dataset, read_karpathy, write_karpathy
from vlret.errors import DataError


def karpathy_doc():
    def img(name, split, n, filepath=None):
        entry = {
            "filename": name,
            "split": split,
            "sentences": [{"raw": f"{name} caption {k}"} for k in range(n)],
        }
        if filepath:
            entry["filepath"] = filepath
        return entry

    return {
        "images": [
            img("a.jpg", "train", 5, "train2014"),
            img("b.jpg", "restval", 5, "val2014"),
            img("c.jpg", "val", 5, "val2014"),
            img("d.jpg", "test", 6, "val2014"),
            img("e.jpg", "test", 7, "val2014"),
        ],
        "dataset": "coco",
    }


def test_karpathy_restval_is_train_and_captions_map(tmp_path):
    ds = read_karpathy(write_json(tmp_path / "dataset_coco.json", karpathy_doc()))
    assert [i.split for i in ds.items] == ["train", "train", "val", "test", "test"]
    assert ds.items[1].id == "val2014/b.jpg"
    assert len(ds.captions) == 5 + 5 + 5 + 6 + 7
    test = ds.split("test")
    assert [len(c) for c in test.item_to_captions] == [6, 7]
    # captions 0..5 belong to d.jpg, 6..12 to e.jpg
    assert test.caption_to_item.tolist() == [0] * 6 + [1] * 7
    assert test.captions[6].text == "e.jpg caption 0"
    assert ds.media_path(ds.items[0]) == tmp_path / "train2014" / "a.jpg"


def test_karpathy_restval_kept_when_asked(tmp_path):
    ds = read_karpathy(write_json(tmp_path / "d.json", karpathy_doc()), merge_restval=False)
    assert ds.splits == ["train", "restval", "val", "test"]


def test_karpathy_empty_caption_names_file_and_record(tmp_path):
    doc = karpathy_doc()
    doc["images"][3]["sentences"][2]["raw"] = "   "
    path = write_json(tmp_path / "d.json", doc)
    with pytest.raises(DataError) as err:
        read_karpathy(path)
    msg = str(err.value)
    assert str(path) in msg and "images[3] (d.jpg) sentences[2]" in msg and "empty" in msg


def test_karpathy_skip_lists_what_was_skipped(tmp_path):
    doc = karpathy_doc()
    del doc["images"][2]["filename"]
    doc["images"][4]["sentences"] = []
    ds = read_karpathy(write_json(tmp_path / "d.json", doc), on_error="skip")
    assert [i.id for i in ds.items] == ["train2014/a.jpg", "val2014/b.jpg", "val2014/d.jpg"]
    assert [s.record for s in ds.skipped] == ["images[2]", "images[4] (e.jpg)"]


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",, }\n]}')
    with pytest.raises(DataError) as err:
        read_karpathy(path)
    assert "line 2 column 24" in str(err.value) and str(path) in str(err.value)


def test_karpathy_schema_violation(tmp_path):
    path = write_json(tmp_path / "x.json", {"annotations": []})
    with pytest.raises(DataError, match='"images" list'):
        read_karpathy(path)


def test_lavis_train_pairs_and_test_lists(tmp_path):
    write_json(
        tmp_path / "coco_karpathy_train.json",
        [
            {"image": "train/1.jpg", "caption": "one", "image_id": "1"},
            {"image": "train/2.jpg", "caption": "two", "image_id": "2"},
            {"image": "train/1.jpg", "caption": "one again", "image_id": "1"},
        ],
    )
    write_json(tmp_path / "coco_karpathy_test.json", [{"image": "val/9.jpg", "caption": ["x", "y", "z"]}])
    ds = load_dataset(tmp_path)
    assert ds.format == "lavis"
    train = ds.split("train")
    assert [i.id for i in train.items] == ["train/1.jpg", "train/2.jpg"]
    assert [c.text for c in train.captions] == ["one", "one again", "two"]
    assert ds.split("test").caption_to_item.tolist() == [0, 0, 0]


def test_lavis_bad_caption(tmp_path):
    path = write_json(
        tmp_path / "f30k_test.json",
        [{"image": "a.jpg", "caption": ["ok"]}, {"image": "b.jpg", "caption": ["", "x"]}],
    )
    with pytest.raises(DataError, match=r"\[1\] \(b.jpg\)"):
        load_dataset(path)


def test_csv_custom_columns_and_line_numbers(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text(
        "file,text,part\nx.png,a cat,test\ny.png,a dog,test\nx.png,another cat,test\nz.png,,train\n"
    )
    with pytest.raises(DataError) as err:
        load_dataset(path, path_column="file", caption_column="text", split_column="part")
    assert "line 5" in str(err.value) and "'text'" in str(err.value)
    ds = load_dataset(path, path_column="file", caption_column="text", split_column="part", on_error="skip")
    test = ds.split("test")
    assert [i.id for i in test.items] == ["x.png", "y.png"]
    assert [c.text for c in test.captions] == ["a cat", "another cat", "a dog"]
    assert ds.skipped[0].record == "line 5"


def test_csv_missing_column_lists_header(tmp_path):
    path = tmp_path / "ann.tsv"
    path.write_text("image\tcap\na.png\thello\n")
    with pytest.raises(DataError, match=r"no column 'caption'; the header has \['image', 'cap'\]"):
        load_dataset(path)
    ds = load_dataset(path, caption_column="cap")
    assert ds.items[0].split == "test" and ds.captions[0].text == "hello"


def test_vse_layout_both_id_conventions(tmp_path):
    write_json(tmp_path / "id_mapping.json", {"10": "im10.jpg", "11": "im11.jpg", "12": "im12.jpg"})
    (tmp_path / "train_caps.txt").write_text("\n".join(f"t{k}" for k in range(10)) + "\n")
    (tmp_path / "train_ids.txt").write_text("10\n11\n")  # one id per image
    (tmp_path / "test_caps.txt").write_text("\n".join(f"s{k}" for k in range(5)) + "\n")
    (tmp_path / "test_ids.txt").write_text("12\n" * 5)  # one id per caption
    ds = load_dataset(tmp_path)
    assert ds.format == "vse"
    train = ds.split("train")
    assert [i.path for i in train.items] == ["im10.jpg", "im11.jpg"]
    assert train.caption_to_item.tolist() == [0] * 5 + [1] * 5
    assert [c.text for c in ds.split("test").captions] == ["s0", "s1", "s2", "s3", "s4"]


def test_vse_inconsistent_counts(tmp_path):
    write_json(tmp_path / "id_mapping.json", {"1": "a.jpg"})
    (tmp_path / "test_caps.txt").write_text("a\nb\nc\n")
    (tmp_path / "test_ids.txt").write_text("1\n1\n")
    with pytest.raises(DataError, match="2 ids for 3 captions"):
        load_dataset(tmp_path)


def test_writer_round_trip(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text(
        "image,caption,split\nimgs/x.png,a cat,train\nimgs/y.png,a dog,test\nimgs/x.png,cat two,train\n"
    )
    ds = load_dataset(path)
    write_karpathy(ds, tmp_path / "out.json")
    back = read_karpathy(tmp_path / "out.json")
    assert [(i.id, i.split) for i in back.items] == [("imgs/x.png", "train"), ("imgs/y.png", "test")]
    assert [(c.item_id, c.text) for c in back.captions] == [
        ("imgs/x.png", "a cat"),
        ("imgs/x.png", "cat two"),
        ("imgs/y.png", "a dog"),
    ]
    assert np.array_equal(back.caption_to_item, [0, 0, 1])


def test_detect_format(tmp_path):
    assert detect_format(write_json(tmp_path / "k.json", {"images": []})) == "karpathy"
    assert detect_format(write_json(tmp_path / "l_test.json", [])) == "lavis"
    (tmp_path / "a.csv").write_text("image,caption\n")
    assert detect_format(tmp_path / "a.csv") == "csv"
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(DataError, match="unknown annotation format"):
        detect_format(tmp_path / "a.txt")


def test_unknown_split_lists_existing(tmp_path):
    ds = read_karpathy(write_json(tmp_path / "d.json", karpathy_doc()))
    with pytest.raises(KeyError, match=r"\['train', 'val', 'test'\]"):
        ds.split("dev")
