"""Several builders on one index (issue 28, section 1): chunks claimed with O_EXCL, so builders started
together cooperate, slurm-style shards split the work, and the result equals a one-process build byte for byte."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ray_worker_hooks import start_ray_with
from vlret.cli import main
from vlret.index import build, build_index
from vlret.index.chunks import ChunkClaims, encode_claimed
from vlret.models import create_model

CHUNK = 8


@pytest.fixture(scope="module")
def collection(synth_data, tmp_path_factory):
    """The synthetic test images (60) and a saved tiny model."""
    root = tmp_path_factory.mktemp("builders")
    model = create_model("tiny-cnn", captions=["a red circle", "a blue square"])
    model.save(root / "model")
    return synth_data.parent / "images", root / "model"


@pytest.fixture(scope="module")
def reference(collection, tmp_path_factory):
    images, model = collection
    return build_index(
        str(model), tmp_path_factory.mktemp("one") / "idx", images=images, chunk_size=CHUNK, progress=False
    )


def _same_index(a: Path, b: Path) -> None:
    assert np.load(a / "embeddings.npy").tobytes() == np.load(b / "embeddings.npy").tobytes()
    for f in sorted(a.glob("items.*")):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    assert (a / "faiss.index").read_bytes() == (b / "faiss.index").read_bytes()


def test_threads_claim_each_chunk_once(tmp_path):
    claims = ChunkClaims(tmp_path)
    done: list[tuple[int, str]] = []

    def encode(c: int, tmp: Path) -> None:
        done.append((c, threading.current_thread().name))
        time.sleep(0.01)  # hold the claim a moment, so the other thread meets it
        (tmp / "x").write_text(str(c))

    workers = [
        threading.Thread(target=encode_claimed, args=(claims, range(12), encode, True), name=f"w{n}")
        for n in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(c for c, _ in done) == list(range(12))  # every chunk, each exactly once
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{c:05d}" for c in range(12)
    ]  # no claim, no tmp left


def _build_in_process(model: str, images: str, out: str, shard, queue) -> None:
    from vlret.index import build_index

    try:
        path = build_index(model, out, images=images, chunk_size=CHUNK, progress=False, shard=shard)
        queue.put(("ok", None if path is None else str(path)))
    except BaseException as exc:  # the parent reports it
        queue.put(("error", repr(exc)))


def test_builders_starting_together_never_remove_each_others_work_folder(tmp_path):
    """Six builders reach the start at once, 50 times over. A builder that saw the work folder of another
    still being started (no manifest yet) used to remove it: 888 errors in 200 rounds (FileNotFoundError,
    'Directory not empty'), and a Ray build failed in CI the same way."""
    errors = []

    def start(work: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            fd = build._start_or_join(work, {"model": "m"}, build.BuildLocks(work.with_suffix("")))
            os.close(fd)
        except OSError as error:
            errors.append(error)

    for round_ in range(50):
        work, barrier = tmp_path / f"idx{round_}.building", threading.Barrier(6)
        threads = [threading.Thread(target=start, args=(work, barrier)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert json.loads((work / "manifest.json").read_text()) == {"model": "m"}
    assert errors == []


def test_two_builders_started_together_cooperate_and_match_one_process(collection, reference, tmp_path):
    images, model = collection
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    out = tmp_path / "idx"
    builders = [
        ctx.Process(target=_build_in_process, args=(str(model), str(images), str(out), None, queue))
        for _ in range(2)
    ]
    for b in builders:
        b.start()
    answers = [queue.get() for _ in builders]
    for b in builders:
        b.join()
    assert [kind for kind, _ in answers] == ["ok", "ok"], answers
    _same_index(out.resolve(), reference)
    assert not out.with_name("idx.building").exists()


def test_shards_split_the_work_and_the_last_assembles(collection, reference, tmp_path, capsys):
    images, model = collection
    out = tmp_path / "idx"
    args = ["index", "build", "--model", str(model), "--images", str(images), "--chunk-size", str(CHUNK)]
    assert main([*args, "--shard", "0/2", "--out", str(out)]) == 0
    assert "other shards' are still missing" in capsys.readouterr().out
    assert not out.exists()
    chunks = sorted(p.name for p in (tmp_path / "idx.building" / "chunks").iterdir())
    assert chunks == ["00000", "00002", "00004", "00006"]  # shard 0 of 2: chunks 0, 2, 4, 6 of 8
    assert main([*args, "--shard", "1/2", "--out", str(out)]) == 0  # the last shard assembles
    _same_index(out.resolve(), reference)


def _count_encoded_chunks(monkeypatch) -> list:
    """The first path of every chunk this process encodes from now on, in order."""
    encoded = []
    original = build._encode_chunk
    monkeypatch.setattr(
        build,
        "_encode_chunk",
        lambda enc, root, part, *a: encoded.append(part[0]) or original(enc, root, part, *a),
    )
    return encoded


def test_a_build_without_shard_finishes_a_sharded_one_encoding_only_what_is_missing(
    collection, reference, tmp_path, monkeypatch
):
    images, model = collection
    out = tmp_path / "idx"
    assert build_index(str(model), out, images=images, chunk_size=CHUNK, progress=False, shard=(1, 4)) is None
    encoded = _count_encoded_chunks(monkeypatch)
    path = build_index(str(model), out, images=images, chunk_size=CHUNK, progress=False)
    assert len(encoded) == 8 - 2  # shard 1 of 4 had done chunks 1 and 5
    _same_index(path, reference)


def test_a_builder_told_not_to_assemble_leaves_every_chunk_for_the_one_that_does(
    collection, reference, tmp_path, monkeypatch
):
    """``assemble=False`` (what each Ray task runs): all 8 chunks encoded, nothing published; the driver's
    plain build then encodes none and assembles."""
    images, model = collection
    out = tmp_path / "idx"
    assert (
        build_index(str(model), out, images=images, chunk_size=CHUNK, progress=False, assemble=False) is None
    )
    assert not out.exists() and len(list((tmp_path / "idx.building" / "chunks").iterdir())) == 8
    encoded = _count_encoded_chunks(monkeypatch)
    path = build_index(str(model), out, images=images, chunk_size=CHUNK, progress=False)
    assert encoded == []
    _same_index(path, reference)


def test_a_claim_left_by_a_dead_builder_is_taken_over(collection, reference, tmp_path):
    images, model = collection
    out = tmp_path / "idx"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    chunks = tmp_path / "idx.building" / "chunks"
    # a build was running: its manifest is in place (from a shard that did nothing yet) and chunk 3 is claimed
    assert build_index(str(model), out, images=images, chunk_size=CHUNK, progress=False, shard=(7, 8)) is None
    claims = ChunkClaims(chunks)
    claim = chunks / ".00003.claim"
    claim.write_text(json.dumps({"host": claims.claims.host, "pid": int(dead.stdout), "since": 0}))
    path = build_index(str(model), out, images=images, chunk_size=CHUNK, progress=False)
    _same_index(path, reference)


def test_a_live_claim_is_not_taken(tmp_path):
    claims = ChunkClaims(tmp_path)
    (tmp_path / ".00000.claim").write_text(
        json.dumps({"host": claims.claims.host, "pid": os.getpid(), "since": 0})
    )
    assert not claims.try_claim(0)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)  # a process that has ended here: only the host tells this claim is not stale
    (tmp_path / ".00001.claim").write_text(json.dumps({"host": "another-host", "pid": pid, "since": 0}))
    assert not claims.try_claim(1)  # another host's process cannot be checked from here: wait for it
    (tmp_path / ".00003.claim").write_text(json.dumps({"host": claims.claims.host, "pid": pid, "since": 0}))
    assert claims.try_claim(3)  # the same pid on this host: dead, taken over
    assert claims.try_claim(2)


def test_a_ray_build_from_the_command_line_equals_one_process(collection, reference, tmp_path, capsys):
    """The documented command, `index build ... --engine ray --workers 2 --threads-per-worker 2`: every chunk
    is encoded by a Ray worker running torch on 2 threads (the reference's count), and the index is byte-equal
    to the one-process build."""
    pytest.importorskip("ray")  # in the test extra: CI has it
    images, model = collection
    marker = tmp_path / "threads"
    args = ["index", "build", "--model", str(model), "--images", str(images), "--chunk-size", str(CHUNK)]
    args += ["--engine", "ray", "--workers", "2"]
    ray = start_ray_with("record_threads", marker)  # the command uses this connection and keeps it
    try:
        assert main([*args, "--out", str(tmp_path / "idx"), "--threads-per-worker", "2"]) == 0
        assert main([*args, "--out", str(tmp_path / "x"), "--threads-per-worker", "0"]) == 2
    finally:
        ray.shutdown()
    assert "--threads-per-worker 0: expected 1 or more" in capsys.readouterr().err
    threads = marker.with_suffix(".log").read_text().split()
    assert threads == ["2"] * -(-len(list(images.rglob("*.png"))) // CHUNK)  # every chunk, on 2 threads
    _same_index(tmp_path / "idx", reference)
    assert not (tmp_path / "idx.building").exists()


def test_a_ray_worker_killed_in_a_chunk_is_retried_and_the_index_is_the_same(collection, reference, tmp_path):
    """A Ray worker dies (SIGKILL) while it holds a chunk's claim: Ray runs the task again in a new worker,
    which takes over the dead worker's claim (every chunk is encoded by a Ray worker, none is left to the
    driver's assembly), and the index is byte-equal to a one-process build."""
    pytest.importorskip("ray")
    from vlret.index.ray_engine import build_with_ray

    images, model = collection
    marker = tmp_path / "killed"
    ray = start_ray_with("die_in_the_first_chunk", marker)
    try:
        path = build_with_ray(
            str(model), tmp_path / "idx", workers=2, images=images, chunk_size=CHUNK, progress=False
        )
    finally:
        ray.shutdown()
    killed = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # that worker is gone
    encoded_by_workers = marker.with_suffix(".log").read_text().split()
    assert len(encoded_by_workers) == -(-len(list(images.rglob("*.png"))) // CHUNK)  # every chunk
    assert str(killed) not in encoded_by_workers
    _same_index(path, reference)
