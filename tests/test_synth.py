"""The synthetic benchmark: deterministic, well-formed, captions true to the scene, near-duplicates in test."""

import hashlib
import json

import pytest

from vlret.data import load_dataset
from vlret.data.synth import COLOURS, SHAPES, SceneObject, SynthConfig, generate, write_benchmark
from vlret.data.synth_truth import caption_fits


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_arguments_same_bytes(tmp_path):
    cfg = SynthConfig(images=30, seed=7)
    write_benchmark(tmp_path / "a", cfg)
    write_benchmark(tmp_path / "b", cfg)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_benchmark(tmp_path / "c", SynthConfig(images=30, seed=8))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_splits_and_captions(synth_data):
    ds = load_dataset(synth_data)
    stats = ds.stats()["splits"]
    assert {s: v["items"] for s, v in stats.items()} == {"train": 48, "val": 6, "test": 6}
    assert all(v["captions_per_item"] == {"5": v["items"]} for v in stats.values())
    lengths = {len(c.text.split()) for c in ds.captions}
    assert max(lengths) - min(lengths) >= 5  # captions of varying length


def test_captions_only_name_what_is_in_the_scene(synth_data):
    ds = load_dataset(synth_data)
    scenes = {s["path"]: s for s in json.loads((synth_data.parent / "scenes.json").read_text())}
    for caption in ds.captions:
        objects = scenes[caption.item_id]["objects"]
        words = caption.text.replace(",", "").split()
        assert {w for w in words if w in COLOURS} <= {o["colour"] for o in objects}, caption
        assert {w.rstrip("s") for w in words if w.rstrip("s") in SHAPES} <= {o["shape"] for o in objects}, (
            caption
        )


def test_near_duplicates_differ_in_one_object(tmp_path):
    path = write_benchmark(tmp_path, SynthConfig(images=100, seed=1, difficulty=1.0))
    scenes = {s["path"]: s for s in json.loads((path.parent / "scenes.json").read_text())}
    twins = [s for s in scenes.values() if s["near_duplicate_of"]]
    assert twins and all("/test/" in s["path"] for s in twins)
    for twin in twins:
        original = scenes[twin["near_duplicate_of"]]["objects"]
        changed = [a != b for a, b in zip(original, twin["objects"], strict=True)]
        assert 1 <= sum(changed) <= 2  # one attribute of one object, or two objects swapped


def test_cached_when_settings_match(tmp_path):
    cfg = SynthConfig(images=20, seed=2)
    path = write_benchmark(tmp_path, cfg)
    stamp = path.stat().st_mtime_ns
    assert write_benchmark(tmp_path, cfg) == path and path.stat().st_mtime_ns == stamp
    write_benchmark(tmp_path, SynthConfig(images=20, seed=3))
    assert path.stat().st_mtime_ns != stamp


# ----- which scenes a caption is true of (reports tell valid matches from misses) --------------------------

SCENE = [
    SceneObject("circle", "red", "small", "striped", row=0, col=0),
    SceneObject("square", "blue", "large", "plain", row=1, col=2),
]


@pytest.mark.parametrize(
    ("caption", "fits"),
    [
        ("a red circle", True),
        ("a small striped red circle", True),
        ("a large red circle", False),  # the circle is small
        ("a dotted red circle", False),
        ("a striped red circle in the top left", True),
        ("a striped red circle in the top left of the picture", True),
        ("a red circle in the centre", False),
        ("a blue square on the right", True),
        ("a red circle to the left of a blue square", True),
        ("a red circle above a large blue square", True),  # row 0 is above row 1
        ("a red circle to the right of a blue square", False),
        ("a blue square below a red circle", True),
        ("a red circle to the left of a red circle", False),  # a relation needs two objects
        ("two shapes including a large blue square", True),
        ("three shapes including a large blue square", False),
        ("a blue square and a small red circle", True),  # a list in any order
        ("a red circle and a red circle", False),  # two parts need two circles
        ("two red circles", False),
        ("a green circle", False),
        ("a cat on a mat", False),  # not a template
    ],
)
def test_caption_fits_by_hand(caption, fits):
    assert caption_fits(caption, SCENE) is fits


def test_every_generated_caption_fits_its_own_scene_and_some_fit_other_test_images():
    dataset, scenes = generate(SynthConfig(images=300))
    objects = {s["path"]: [SceneObject(**o) for o in s["objects"]] for s in scenes}
    assert all(caption_fits(c.text, objects[c.item_id]) for c in dataset.captions)  # 1,500 captions
    test_paths = [p for p in objects if p.startswith("images/test")]
    shared = [
        c
        for c in dataset.captions
        if c.item_id in test_paths and sum(caption_fits(c.text, objects[p]) for p in test_paths) > 1
    ]
    assert 0 < len(shared) < len(test_paths) * 5  # some captions are true of other images, not all
    twins = [s for s in scenes if s["near_duplicate_of"]]
    told_apart = [
        t
        for t in twins
        if not all(
            caption_fits(c.text, objects[t["path"]])
            for c in dataset.captions
            if c.item_id == t["near_duplicate_of"]
        )
    ]
    assert twins and told_apart  # some caption of the original names the changed attribute
