"""The synthetic benchmark: deterministic, well-formed, captions true to the scene, near-duplicates in test."""

import hashlib
import json

from vlret.data import load_dataset
from vlret.data.synth import COLOURS, SHAPES, SynthConfig, write_benchmark


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
