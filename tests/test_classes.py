"""Class-folder and CoOp split data, few-shot sampling, base / new classes, the harmonic mean
(TextRefiner spec section 9, items 11-13)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlret.data.classes import (
    LabelledImage,
    base_new,
    few_shot,
    few_shot_data,
    harmonic_mean,
    read_class_folders,
    read_split_zhou,
)
from vlret.errors import DataError


def test_harmonic_means_of_the_spec():
    assert harmonic_mean(79.74, 74.32) == pytest.approx(76.935, abs=1e-3)
    assert harmonic_mean(85.22, 79.64) == pytest.approx(82.336, abs=1e-3)
    assert harmonic_mean(82.69, 63.22) == pytest.approx(71.66, abs=1e-2)
    assert harmonic_mean(0.0, 0.0) == 0.0


def _data(classes: int, per_class: int = 2):
    from vlret.data.classes import ClassData

    images = [LabelledImage(f"{c}/{i}.jpg", c) for c in range(classes) for i in range(per_class)]
    return ClassData(".", [f"class {c}" for c in range(classes)], {"train": images, "test": list(images)})


@pytest.mark.parametrize(("classes", "base", "new"), [(37, 19, 18), (397, 199, 198), (10, 5, 5)])
def test_base_new_split_sizes_and_relabelling(classes, base, new):
    data = _data(classes)
    b, n = base_new(data, "base"), base_new(data, "new")
    assert (len(b.classnames), len(n.classnames)) == (base, new)
    assert sorted({i.label for i in n.split("test")}) == list(range(new))
    assert n.classnames[0] == f"class {base}"  # the first new class is the one after the base half
    assert all(n.classnames[i.label] == f"class {int(i.path.split('/')[0])}" for i in n.split("test"))


def test_few_shot_sampler_counts_determinism_and_shortfall():
    images = [LabelledImage(f"{c}/{i}.jpg", c) for c in range(3) for i in range(20 if c else 5)]
    a, short = few_shot(images, 16, seed=1)
    b, _ = few_shot(images, 16, seed=1)
    c, _ = few_shot(images, 16, seed=2)
    assert a == b and a != c
    counts = {label: sum(i.label == label for i in a) for label in range(3)}
    assert counts == {0: 5, 1: 16, 2: 16} and short == {0: 5}
    assert len(set(a)) == len(a)  # without replacement


def test_few_shot_data_takes_four_per_class_in_val_and_notes_shortfalls():
    from vlret.data.classes import ClassData

    train = [LabelledImage(f"t{c}_{i}", c) for c in range(2) for i in range(20 if c else 3)]
    val = [LabelledImage(f"v{c}_{i}", c) for c in range(2) for i in range(10)]
    data = ClassData(".", ["cat", "dog"], {"train": train, "val": val, "test": []})
    out = few_shot_data(data, 16, seed=1)
    assert len(out.split("val")) == 8 and len(out.split("train")) == 3 + 16
    assert out.notes and "cat" in out.notes[0] and "3 images" in out.notes[0]


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_split_zhou_file_and_its_bad_input(tmp_path):
    for rel in ("a/1.jpg", "a/2.jpg", "b/1.jpg"):
        _image(tmp_path / "images" / rel)
    split = {
        "train": [["a/1.jpg", 0, "apple"], ["b/1.jpg", 1, "banana"]],
        "val": [],
        "test": [["a/2.jpg", 0, "apple"]],
    }
    path = tmp_path / "split_zhou_Fruit.json"
    path.write_text(json.dumps(split))
    data = read_split_zhou(path, tmp_path / "images")
    assert data.classnames == ["apple", "banana"] and len(data.split("train")) == 2
    split["test"].append(["b/9.jpg", 1, "banana"])
    path.write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"test\[1\].*b/9.jpg"):
        read_split_zhou(path, tmp_path / "images")
    split["test"][1] = ["b/1.jpg", 1, "cherry"]
    path.write_text(json.dumps(split))
    with pytest.raises(DataError, match="label 1 is 'banana'"):
        read_split_zhou(path, tmp_path / "images")


def test_class_folders_and_an_empty_class(tmp_path):
    for rel in (
        "train/golden_retriever/1.png",
        "train/cat/1.png",
        "test/cat/2.png",
        "test/golden_retriever/3.png",
    ):
        _image(tmp_path / rel)
    data = read_class_folders(tmp_path)
    assert data.classnames == ["cat", "golden retriever"]
    assert sorted(data.splits) == ["test", "train"] and data.split("test")[1].label == 1
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_class_folders(tmp_path)


def test_the_synthetic_class_benchmark_splits_compositions(tmp_path):
    from vlret.data.synth_classes import ClassBenchConfig, compositions, write_class_benchmark

    names = compositions()
    assert len(names) == 24 and len(set(names)) == 24
    base, new = names[:12], names[12:]
    for word in {n.split()[0] for n in names} | {n.split()[1] for n in names}:
        assert any(word in n.split() for n in base) and any(word in n.split() for n in new)
    path = write_class_benchmark(tmp_path, ClassBenchConfig(per_class={"train": 2, "val": 1, "test": 1}))
    data = read_split_zhou(path, tmp_path / "images")
    assert data.classnames == names and len(data.split("train")) == 48
    assert base_new(data, "new").classnames == new
    again = write_class_benchmark(
        tmp_path / "again", ClassBenchConfig(per_class={"train": 2, "val": 1, "test": 1})
    )
    first = (tmp_path / "images" / data.split("test")[5].path).read_bytes()
    assert (again.parent / "images" / data.split("test")[5].path).read_bytes() == first


def _png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_id_named_folders_take_their_names_from_classnames_txt(tmp_path):
    from vlret.data.classes import read_class_folders

    names = tmp_path / "classnames.txt"
    names.write_text("n01 tench\nn02 goldfish\nn03 great white shark\n")
    for folder in ("n03", "n01"):  # ImageNet-A style: a subset of the ids
        _png(tmp_path / "a" / folder / "x.jpg")
    data = read_class_folders(tmp_path / "a", names)
    assert data.classnames == ["tench", "great white shark"]
    assert [i.label for i in data.split("test")] == [0, 1]
    for folder in ("0", "2", "10"):  # ImageNetV2: folders numbered by label, numeric order
        _png(tmp_path / "v2" / folder / "x.jpg")
    long_names = tmp_path / "long.txt"
    long_names.write_text("".join(f"n{k:02d} class {k}\n" for k in range(11)))
    assert read_class_folders(tmp_path / "v2", long_names).classnames == ["class 0", "class 2", "class 10"]
    _png(tmp_path / "b" / "n99" / "x.jpg")
    with pytest.raises(DataError, match="no class name for folder 'n99'"):
        read_class_folders(tmp_path / "b", names)
    names.write_text("n01 tench\nn02\n")
    with pytest.raises(DataError, match="line 2"):
        read_class_folders(tmp_path / "a", names)


def test_fgvc_aircraft_lists(tmp_path):
    from vlret.data.classes import read_fgvc_aircraft

    (tmp_path / "variants.txt").write_text("707-320\nA300B4\n")
    for split, lines in {
        "train": "1 A300B4\n2 707-320\n",
        "val": "3 707-320\n",
        "test": "4 A300B4\n",
    }.items():
        (tmp_path / f"images_variant_{split}.txt").write_text(lines)
    for k in range(1, 5):
        _png(tmp_path / "images" / f"{k}.jpg")
    data = read_fgvc_aircraft(tmp_path)
    assert data.classnames == ["707-320", "A300B4"]
    assert [(i.path, i.label) for i in data.split("train")] == [("images/1.jpg", 1), ("images/2.jpg", 0)]
    (tmp_path / "images_variant_test.txt").write_text("4 A380\n")
    with pytest.raises(DataError, match="line 1.*'A380'"):
        read_fgvc_aircraft(tmp_path)
