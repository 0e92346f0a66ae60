"""Updates of an index (issue 36): only what changed is encoded, unchanged rows are kept byte for byte, and
an update killed at any stage leaves the served version as it was and resumes.

The expected sets of encoded files are worked out by hand from the changes each test makes."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlret.cli import main
from vlret.errors import ConfigError
from vlret.index import Searcher, build_index
from vlret.index import build as build_module
from vlret.index import update as update_module
from vlret.index.choice import FAISS_LABELS, IndexChoice
from vlret.index.sources import MASS_REMOVAL_SHARE, Records
from vlret.models import create_model

N = 12


def _image(seed: int, size: int = 24) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("update") / "model"
    create_model("tiny-cnn", captions=["a red circle", "a blue square"], seed=0).save(folder)
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    """``N`` distinct images, ``00.png`` .. ``11.png``."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(N):
        _image(n).save(folder / f"{n:02d}.png")
    return folder


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The files the encoders read, by name, in order."""
    seen: list[str] = []
    real = build_module.load_image
    monkeypatch.setattr(
        build_module,
        "load_image",
        lambda path, record=None: seen.append(Path(path).name) or real(path, record),
    )
    return seen


def _rows(index: Path) -> dict[str, bytes]:
    """Each item's embedding row as bytes, by path."""
    version = index.resolve()
    embeddings = np.load(version / "embeddings.npy")
    searcher = Searcher(version)
    return {item["path"]: embeddings[n].tobytes() for n, item in enumerate(searcher.items)}


def _build(model: Path, photos: Path, out: Path, **options) -> Path:
    return build_index(str(model), out, images=photos, chunk_size=4, progress=False, **options)


def test_each_kind_of_change_encodes_what_it_should_and_keeps_the_rest_byte_for_byte(
    model, photos, tmp_path, loads
):
    index = _build(model, photos, tmp_path / "idx")
    before = _rows(index)
    loads.clear()
    _image(100).save(photos / "20.png")  # new
    _image(101).save(photos / "21.png")  # new
    (photos / "01.png").unlink()  # removed
    _image(102, size=30).save(photos / "02.png")  # edited in place
    os.rename(photos / "03.png", photos / "moved.png")  # renamed: its row moves, nothing is read for it
    os.utime(photos / "04.png", ns=(1, 10**18))  # touched: another mtime, the same bytes
    (photos / "05.png").unlink()
    (photos / "05.png").symlink_to(photos / "06.png")  # replaced by a link to another photo's bytes
    (photos / "07.png").write_bytes(b"not an image any more")  # broken, skipped
    index = _build(model, photos, tmp_path / "idx", on_error="skip")
    assert sorted(loads) == ["02.png", "05.png", "07.png", "20.png", "21.png"]
    meta = json.loads((index / "index.json").read_text())
    assert meta["update"] | {} == meta["update"] and {
        k: meta["update"][k] for k in ("new", "edited", "moved", "touched", "removed", "encoded")
    } == {"new": 2, "edited": 3, "moved": 1, "touched": 1, "removed": 1, "encoded": 4}
    assert [s["file"] for s in meta["skipped"]] == ["07.png"]
    after = _rows(index)
    assert sorted(after) == sorted(
        ["00.png", "02.png", "04.png", "05.png", "06.png", "08.png", "09.png", "10.png", "11.png"]
        + ["20.png", "21.png", "moved.png"]
    )
    for name in ("00.png", "04.png", "06.png", "08.png", "09.png", "10.png", "11.png"):
        assert after[name] == before[name], name
    assert after["moved.png"] == before["03.png"]
    assert after["02.png"] != before["02.png"]
    fresh = _rows(_build(model, photos, tmp_path / "fresh", on_error="skip"))
    for name, row in after.items():  # other batches: float noise only
        np.testing.assert_allclose(
            np.frombuffer(row, np.float32), np.frombuffer(fresh[name], np.float32), atol=1e-6
        )
    # the link's row is the other photo's (same bytes, float noise aside)
    np.testing.assert_allclose(
        np.frombuffer(after["05.png"], np.float32), np.frombuffer(after["06.png"], np.float32), atol=1e-6
    )
    loads.clear()
    assert _build(model, photos, tmp_path / "idx", on_error="skip").resolve() == index.resolve()
    assert loads == []  # the broken file is known: not read again until it changes


def test_an_edit_that_keeps_size_and_mtime_is_found_only_with_verify(model, photos, tmp_path, loads):
    index = _build(model, photos, tmp_path / "idx")
    version = index.resolve()
    target = photos / "08.png"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    replacement = bytearray((photos / "09.png").read_bytes())
    assert len(replacement) == len(data)  # 24 x 24 random PNGs: the same size
    target.write_bytes(bytes(replacement))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    loads.clear()
    assert _build(model, photos, tmp_path / "idx").resolve() == version
    assert loads == []
    _build(model, photos, tmp_path / "idx", verify=True)
    assert loads == ["08.png"]


@pytest.mark.parametrize("removed, refused", [(6, False), (7, True)])
def test_an_update_removing_more_than_half_is_refused_unless_allowed(
    model, photos, tmp_path, removed, refused
):
    index = _build(model, photos, tmp_path / "idx")
    version = index.resolve()
    assert MASS_REMOVAL_SHARE == 0.5
    for n in range(removed):
        (photos / f"{n:02d}.png").unlink()
    if not refused:  # 6 of 12 is 50%: allowed
        assert len(Searcher(_build(model, photos, tmp_path / "idx")).items) == N - removed
        return
    with pytest.raises(ConfigError, match=r"remove 7 of the index's 12 items \(58%.*--allow-mass-removal"):
        _build(model, photos, tmp_path / "idx")
    assert index.resolve() == version
    assert len(Searcher(_build(model, photos, tmp_path / "idx", allow_mass_removal=True)).items) == N - 7


def test_an_update_with_another_model_or_storage_is_refused_and_rebuild_or_retrain_go_on(
    model, photos, tmp_path
):
    index = _build(model, photos, tmp_path / "idx")
    other = tmp_path / "other"
    create_model("tiny-cnn", captions=["a red circle", "a blue square"], seed=1).save(other)
    with pytest.raises(ConfigError, match=r"model_fingerprint: .*--rebuild"):
        _build(other, photos, tmp_path / "idx")
    with pytest.raises(ConfigError, match=r"stored memory .* on_disk .*--retrain"):
        _build(model, photos, tmp_path / "idx", on_disk=True)
    assert _build(model, photos, tmp_path / "idx", on_disk=True, retrain=True) == index
    assert json.loads((index / "index.json").read_text())["storage"] == "on_disk"
    _build(other, photos, tmp_path / "idx", rebuild=True)
    assert json.loads((index / "index.json").read_text())["update"] if False else True
    assert "update" not in json.loads((index / "index.json").read_text())  # a full build


def test_an_index_without_records_asks_for_one_rebuild(model, photos, tmp_path):
    index = _build(model, photos, tmp_path / "idx")
    for f in index.resolve().glob("files.*"):
        f.unlink()
    with pytest.raises(ConfigError, match="before vlret kept a record of its files.*--rebuild"):
        _build(model, photos, tmp_path / "idx")


class Killed(Exception):
    pass


def _change(photos: Path) -> None:
    for n in (20, 21, 22, 23, 24):
        _image(100 + n).save(photos / f"{n}.png")
    (photos / "00.png").unlink()


@pytest.mark.parametrize("stage", ["encoding", "assembling", "publishing"])
def test_an_update_killed_at_any_stage_leaves_the_served_version_and_resumes(
    model, photos, tmp_path, loads, monkeypatch, stage
):
    index = _build(model, photos, tmp_path / "idx")
    version = index.resolve()
    _change(photos)
    loads.clear()
    with monkeypatch.context() as patch:
        if stage == "encoding":
            real = build_module.load_image

            def dies_at_the_fifth(path, record=None):
                if len(loads) == 4:  # four files read: the fifth is the first of the second chunk
                    raise Killed
                return real(path, record)

            patch.setattr(build_module, "load_image", dies_at_the_fifth)
        elif stage == "assembling":
            patch.setattr(update_module, "_update_search", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        else:
            patch.setattr(update_module, "publish_version", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            _build(model, photos, tmp_path / "idx")
    assert index.resolve() == version and len(Searcher(index).items) == N  # the served version is untouched
    encoded_before = len(loads)
    loads.clear()
    index = _build(model, photos, tmp_path / "idx")
    # chunks of 4: the first chunk (20..23) was done before the kill at the fifth file
    assert len(loads) == {"encoding": 1, "assembling": 0, "publishing": 0}[stage]
    assert encoded_before == {"encoding": 4, "assembling": 5, "publishing": 5}[stage]
    assert sorted(_rows(index)) == sorted(
        [f"{n:02d}.png" for n in range(1, N)] + [f"{n}.png" for n in range(20, 25)]
    )


def test_a_file_rewritten_while_it_is_encoded_is_encoded_again_at_the_next_update(
    model, photos, tmp_path, monkeypatch
):
    index = _build(model, photos, tmp_path / "idx")
    _image(200).save(photos / "30.png")
    real = build_module.load_image

    def rewritten_after_the_read(path, record=None):
        image = real(path, record)
        if Path(path).name == "30.png":
            _image(201, size=26).save(path)  # the copy goes on after our read
        return image

    monkeypatch.setattr(build_module, "load_image", rewritten_after_the_read)
    _build(model, photos, tmp_path / "idx")
    monkeypatch.undo()
    seen: list[str] = []
    monkeypatch.setattr(build_module, "load_image", lambda p, r=None: seen.append(Path(p).name) or real(p, r))
    _build(model, photos, tmp_path / "idx")
    assert seen == ["30.png"]
    fresh = _rows(_build(model, photos, tmp_path / "fresh"))
    np.testing.assert_allclose(
        np.frombuffer(_rows(index)["30.png"], np.float32),
        np.frombuffer(fresh["30.png"], np.float32),
        atol=1e-6,
    )


def _ivf(n: int, dim: int, budget=None) -> IndexChoice:
    """An inverted-file index over the tiny collection: 2 lists, both probed (so searches are exact)."""
    return IndexChoice("ivf_flat", "IVF2,Flat", 2, 0, "forced for the test")


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_inverted_file_index_is_updated_without_training_and_answers_as_a_fresh_build(
    model, photos, tmp_path, monkeypatch, on_disk
):
    monkeypatch.setattr(build_module, "choose_index", _ivf)
    monkeypatch.setattr(update_module, "choose_index", _ivf)
    index = _build(model, photos, tmp_path / "idx", on_disk=on_disk)
    _change(photos)
    (photos / "05.png").unlink()
    trained: list[str] = []
    import vlret.index.layout as layout
    import vlret.index.ondisk as ondisk

    real_train = ondisk.train_ivf

    def counting(factory, vectors, *a, **k):
        trained.append(factory)
        return real_train(factory, vectors, *a, **k)

    monkeypatch.setattr(layout, "train_ivf", counting)
    monkeypatch.setattr(ondisk, "train_ivf", counting)
    _build(model, photos, tmp_path / "idx", on_disk=on_disk)
    assert trained == []  # nothing trained again
    version = index.resolve()
    labels = version / FAISS_LABELS
    if on_disk:
        assert not labels.exists()  # every row added again: labels are the row numbers
    else:
        # 12 rows labelled 0..11; 00 and 05 removed; the 5 new ones labelled 12..16
        assert np.load(labels).tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    meta = json.loads((version / "index.json").read_text())
    assert meta["trained_on"] == N and meta["retrain_due"] is None  # 15 items: within 6..24
    fresh = _build(model, photos, tmp_path / "fresh", on_disk=on_disk)
    trained.clear()
    updated, other = Searcher(index), Searcher(fresh)
    for text in ("a red circle", "a blue square"):
        a, b = updated.text_to_image(text, k=15), other.text_to_image(text, k=15)
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    for n in range(25, 36):  # 26 items against 12 trained on: more than twice
        _image(300 + n).save(photos / f"{n}.png")
    _build(model, photos, tmp_path / "idx", on_disk=on_disk)
    due = json.loads((index / "index.json").read_text())["retrain_due"]
    assert "holds 26 items" in due and "trained on 12" in due and "--retrain" in due
    _build(model, photos, tmp_path / "idx", on_disk=on_disk, retrain=True)
    assert trained == ["IVF2,Flat"]
    meta = json.loads((index / "index.json").read_text())
    assert meta["trained_on"] == 26 and meta["retrain_due"] is None
    assert not (index.resolve() / FAISS_LABELS).exists()


def test_a_dataset_update_keeps_captions_it_holds_and_encodes_new_ones(
    model, synth_data, tmp_path, monkeypatch
):
    data = json.loads(synth_data.read_text())
    media = synth_data.parent
    annotations = tmp_path / "dataset.json"
    annotations.write_text(json.dumps(data))
    args = dict(chunk_size=8, progress=False)
    from vlret.data import load_dataset

    def dataset():
        loaded = load_dataset(annotations)
        loaded.media_root = media
        return loaded

    index = build_index(str(model), tmp_path / "idx", dataset=dataset(), **args)
    before = Searcher(index)
    old_texts = {c["text"]: n for n, c in enumerate(before.captions)}
    old_vectors = np.load(index.resolve() / "caption_embeddings.npy")
    encoded: list[list[str]] = []
    real = update_module.encode_texts
    monkeypatch.setattr(
        update_module,
        "encode_texts",
        lambda model, texts, **k: encoded.append(list(texts)) or real(model, texts, **k),
    )
    data["images"][0]["sentences"][0]["raw"] = "a completely new caption"  # Karpathy's layout
    annotations.write_text(json.dumps(data))
    index = build_index(str(model), tmp_path / "idx", dataset=dataset(), **args)
    assert encoded == [["a completely new caption"]]
    after = Searcher(index)
    vectors = np.load(index.resolve() / "caption_embeddings.npy")
    for n, caption in enumerate(after.captions):
        if caption["text"] in old_texts:
            assert vectors[n].tobytes() == old_vectors[old_texts[caption["text"]]].tobytes()
    n = [c["text"] for c in after.captions].index("a completely new caption")
    np.testing.assert_allclose(vectors[n], after.embed_text("a completely new caption"), atol=1e-6)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    _image(seed).save(out, format="PNG")
    return out.getvalue()


def test_a_webdataset_update_reads_only_the_shard_that_changed_and_its_changed_members(
    model, tmp_path, loads
):
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        _tar(
            shards / f"{s:05d}.tar", {f"{s}{n}.png": _png(10 * s + n) for n in range(3)} | {f"{s}0.txt": b"x"}
        )
    out = tmp_path / "wds"
    assert (
        main(["index", "build", "--model", str(model), "--webdataset", str(shards), "--out", str(out)]) == 0
    )
    loads.clear()
    members = {f"1{n}.png": _png(10 + n) for n in range(3)} | {"10.txt": b"x"}
    members["11.png"] = _png(99)  # one member changed; the shard is rewritten
    _tar(shards / "00001.tar", members)
    assert (
        main(["index", "build", "--model", str(model), "--webdataset", str(shards), "--out", str(out)]) == 0
    )
    assert loads == ["11.png"]


def test_records_hold_every_listed_file_with_its_row(model, photos, tmp_path):
    (photos / "03.png").write_bytes(b"broken")
    index = _build(model, photos, tmp_path / "idx", on_error="skip")
    records = Records.read(index.resolve())
    assert records.paths == [f"{n:02d}.png" for n in range(N)]
    assert records.rows.tolist() == [0, 1, 2, -1, 3, 4, 5, 6, 7, 8, 9, 10]
    assert records.keys[3].size == len(b"broken")


def test_updaters_of_different_plans_wait_for_each_other(tmp_path):
    out = tmp_path / "idx"
    locks = build_module.BuildLocks(out)
    work = tmp_path / "idx.building"
    first = build_module._start_or_join(work, {"update_of": "v-1", "items": "a"}, locks)
    assert first is not None
    assert build_module._start_or_join(work, {"update_of": "v-1", "items": "b"}, locks) is None  # waits
    same = build_module._start_or_join(work, {"update_of": "v-1", "items": "a"}, locks)
    assert same is not None  # the same plan joins
    os.close(same)
    os.close(first)
    nxt = build_module._start_or_join(
        work, {"update_of": "v-1", "items": "b"}, locks
    )  # a stale update: cleared
    assert nxt is not None and json.loads((work / "manifest.json").read_text())["items"] == "b"
    os.close(nxt)
    shutil.rmtree(work)


def test_the_command_line_updates_and_says_what_it_did(model, photos, tmp_path, capsys):
    out = str(tmp_path / "idx")
    build = [
        "index",
        "build",
        "--model",
        str(model),
        "--images",
        str(photos),
        "--out",
        out,
        "--chunk-size",
        "4",
    ]
    assert main(build) == 0
    _image(500).save(photos / "50.png")
    assert main(build) == 0
    err = capsys.readouterr().err
    assert "update of" in err and "1 to encode (1 new, 0 changed), 12 unchanged, 0 removed" in err
    assert main(build) == 0
    assert "up to date" in capsys.readouterr().err
    for n in range(7):
        (photos / f"{n:02d}.png").unlink()
    assert main(build) == 2
    assert "--allow-mass-removal" in capsys.readouterr().err
    assert main([*build, "--allow-mass-removal", "--verify"]) == 0
    assert json.loads((Path(out) / "index.json").read_text())["items"] == 6
    assert main([*build, "--retrain"]) == 0
    assert main([*build, "--rebuild"]) == 0
    assert "update" not in json.loads((Path(out) / "index.json").read_text())


def test_a_file_still_being_written_is_left_for_a_later_update(model, photos, tmp_path, loads):
    _build(model, photos, tmp_path / "idx")
    _image(600).save(photos / "60.png")  # modified just now
    loads.clear()
    index = _build(model, photos, tmp_path / "idx", settle_seconds=3600)
    assert loads == [] and "60.png" not in _rows(index)
    os.utime(photos / "60.png", ns=(10**18, 10**18 - 7200 * 10**9))  # two hours before "now"
    index = _build(model, photos, tmp_path / "idx", settle_seconds=3600)
    assert loads == ["60.png"] and "60.png" in _rows(index)


def test_a_file_that_vanishes_before_it_is_read_is_dropped_not_an_error(model, photos, tmp_path, monkeypatch):
    _build(model, photos, tmp_path / "idx")
    _image(700).save(photos / "70.png")
    real = build_module.key_before_reading

    def deleted_first(path):
        if Path(path).name == "70.png":
            Path(path).unlink()
        return real(path)

    monkeypatch.setattr(build_module, "key_before_reading", deleted_first)
    index = _build(model, photos, tmp_path / "idx")  # on_error="raise": still no error
    rows = _rows(index)
    assert "70.png" not in rows and len(rows) == N
    assert Records.read(index.resolve()).paths == [f"{n:02d}.png" for n in range(N)]


def test_a_watched_folder_follows_copies_in_few_updates(model, photos, tmp_path):
    import threading

    from vlret.index.watch import watch_folder

    out = tmp_path / "idx"
    _build(model, photos, out)
    published = threading.Event()
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if "published" in line:
            published.set()

    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_folder,
        args=(photos, out, str(model)),
        kwargs={"settle": 0.2, "stop": stop, "report": report, "chunk_size": 4},
    )
    watcher.start()
    try:
        n = 0
        while not published.wait(3):  # a new file each time, until the watcher has seen one
            assert n < 20, lines
            _image(800 + n).save(photos / f"w{n:02d}.png")
            n += 1
        expected = {p.name for p in photos.iterdir()}
        while {item["path"] for item in Searcher(out).items} != expected:
            published.clear()
            assert published.wait(30), lines
        before = sum("published" in line for line in lines)
        for k in range(40):  # a copy of 40 photos at once, and one removal
            _image(900 + k).save(photos / f"copy{k:02d}.png")
        (photos / "00.png").unlink()
        expected = {p.name for p in photos.iterdir()}
        while {item["path"] for item in Searcher(out).items} != expected:
            published.clear()
            assert published.wait(30), lines
        assert sum("published" in line for line in lines) - before <= 3  # a few updates, not 41
    finally:
        stop.set()
        watcher.join(60)
    assert not watcher.is_alive()


def test_the_watch_command_builds_a_missing_index_and_refuses_bad_options(model, photos, tmp_path, capsys):
    out = str(tmp_path / "idx")
    watch = ["index", "watch", str(photos), "--index", out]
    assert main(watch + ["--stop-after", "1"]) == 2  # no index yet, and no model to build it with
    assert "give --model" in capsys.readouterr().err
    assert main([*watch, "--model", str(model), "--settle", "-1"]) == 2
    assert "--settle" in capsys.readouterr().err
    assert main([*watch, "--model", str(model), "--stop-after", "0"]) == 2
    assert main(["index", "watch", str(tmp_path / "gone"), "--index", out, "--model", str(model)]) == 2
    assert "gone: not a folder" in capsys.readouterr().err
    options = ["--settle", "0", "--poll", "--on-error", "raise", "--memory-gb", "1", "--stop-after", "1"]
    assert main([*watch, "--model", str(model), *options]) == 0
    assert "1 update(s) published" in capsys.readouterr().out
    meta = json.loads((Path(out) / "index.json").read_text())
    assert meta["items"] == N and meta["memory_budget_bytes"] == 2**30


def test_video_updates_read_only_new_clips_and_another_sampling_needs_a_rebuild(
    model, tmp_path, monkeypatch, capsys
):
    from vlret.data.video import write_video

    clips = tmp_path / "clips"
    for n in range(2):
        write_video(
            clips / f"clip{n}.mp4", [np.full((32, 32, 3), 40 * n + k, np.uint8) for k in range(10)], fps=10
        )
    out = str(tmp_path / "idx")
    watch = [
        "index",
        "watch",
        str(clips),
        "--index",
        out,
        "--model",
        str(model),
        "--videos",
        "--stop-after",
        "1",
    ]
    assert main(watch) == 0  # builds the missing index: one version published
    assert json.loads((Path(out) / "index.json").read_text())["items"] == 2
    write_video(clips / "clip2.mp4", [np.full((32, 32, 3), 200, np.uint8) for _ in range(10)], fps=10)
    read: list[str] = []
    real = build_module.clip_frames
    monkeypatch.setattr(
        build_module, "clip_frames", lambda path, *a: read.append(Path(path).name) or real(path, *a)
    )
    build = ["index", "build", "--model", str(model), "--videos", str(clips), "--out", out]
    assert main(build) == 0
    assert read == ["clip2.mp4"]
    capsys.readouterr()
    assert main([*build, "--video-frames", "4"]) == 2
    err = capsys.readouterr().err
    assert "video: {} in the index, {'frames': 4} now" in err and "--rebuild" in err


def test_the_page_says_when_the_collection_last_changed_and_follows_an_update(model, photos, tmp_path):
    from fastapi.testclient import TestClient

    from vlret.serve import create_app

    index = _build(model, photos, tmp_path / "idx")
    app = create_app(index, check_every=0)
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert (
            health["items"] == N
            and health["updated"] == json.loads((index / "index.json").read_text())["created"]
        )
        assert "last changed" in client.get("/").text
        _image(1000).save(photos / "99.png")
        _build(model, photos, tmp_path / "idx")
        updated = json.loads((index / "index.json").read_text())["updated"]
        client.get("/api/search", params={"q": "a red circle"})  # starts opening the new version
        app.state.service.versions._loading.join()
        health = client.get("/health").json()
        assert health["reload_error"] is None, health["reload_error"]
        assert health["items"] == N + 1 and health["updated"] == updated


def test_a_sharded_update_encodes_only_the_changed_files_split_between_the_shards(
    model, photos, tmp_path, loads
):
    index = _build(model, photos, tmp_path / "idx")
    version = index.resolve()
    for n in range(20, 30):  # ten new files: chunks of 4 -> chunks 0, 1, 2
        _image(100 + n).save(photos / f"{n}.png")
    loads.clear()
    assert _build(model, photos, tmp_path / "idx", shard=(0, 2)) is None  # chunks 0 and 2; 1 still missing
    assert sorted(loads) == ["20.png", "21.png", "22.png", "23.png", "28.png", "29.png"]
    assert index.resolve() == version  # nothing published yet
    loads.clear()
    _build(model, photos, tmp_path / "idx", shard=(1, 2))  # the last shard assembles
    assert sorted(loads) == ["24.png", "25.png", "26.png", "27.png"]
    assert index.resolve() != version and len(Searcher(index).items) == N + 10


def test_a_photo_folder_with_broken_files_builds_by_default_and_says_what_it_skipped(
    model, photos, tmp_path, capsys
):
    for n in range(5):
        (photos / f"{n:02d}.png").write_bytes(b"not a picture")
    out = str(tmp_path / "idx")
    assert main(["index", "build", "--model", str(model), "--images", str(photos), "--out", out]) == 0
    err = capsys.readouterr().err
    assert "skipped 5 unreadable file(s): 00.png: cannot decode image" in err
    assert "04.png" not in err and "and 2 more" in err  # the first three named, the rest counted
    assert f"{out}/index.json" in err and "--on-error raise" in err
    assert len(json.loads((Path(out) / "index.json").read_text())["skipped"]) == 5
    strict = ["index", "build", "--model", str(model), "--images", str(photos), "--out", str(tmp_path / "b")]
    assert main([*strict, "--on-error", "raise"]) == 2
    assert "cannot decode" in capsys.readouterr().err
    # a dataset stays strict: a missing test image changes the protocol
    (tmp_path / "pairs.csv").write_text(
        "image,caption\nphotos/00.png,a broken picture\nphotos/05.png,a picture\n"
    )
    data = [
        "index",
        "build",
        "--model",
        str(model),
        "--data",
        str(tmp_path / "pairs.csv"),
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(data) == 2
    assert "cannot decode" in capsys.readouterr().err
