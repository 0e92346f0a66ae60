"""Every benchmark in bench/ runs (``--smoke``: tiny sizes), so an API change that breaks one fails here and
not months later. Its numbers mean nothing; that it runs, and ends with its ratio line, is what counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "timing.py")


def test_every_benchmark_is_listed():
    assert len(SCRIPTS) >= 11  # a benchmark added later joins by existing


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_benchmark_runs_in_smoke_mode(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLRET_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(script), "--smoke"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = [line for line in done.stdout.splitlines() if line.strip()][-1]
    assert re.search(r":.*\d", last), last  # "name: value": the ratio is printed last


def _run(script: str, *options: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLRET_CACHE": str(cwd / "cache")}
    command = [sys.executable, str(BENCH / script), "--smoke", *options]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def test_train_speed_compares_the_loaders_workers_with_its_thread_without_a_model(tmp_path):
    done = _run("train_speed.py", "--loader-only", "--num-workers", "1", "--no-cache-images", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cache_images=False batch=8")
    assert lines[1].startswith("prefetch thread: best") and lines[2].startswith("1 worker processes: best")
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1])
    refused = _run("train_speed.py", "--loader-only", cwd=tmp_path)  # --num-workers auto is not a number
    assert refused.returncode == 2 and "give a number from 1" in refused.stderr
    no_processes = _run(
        "train_speed.py", "--loader-only", "--num-workers", "0", cwd=tmp_path
    )  # the thread twice
    assert no_processes.returncode == 2 and "give a number from 1" in no_processes.stderr
    too_many = _run("train_speed.py", "--loader-only", "--num-workers", "65", cwd=tmp_path)
    assert too_many.returncode == 2
    assert too_many.stderr.splitlines()[-1] == (
        "train_speed.py: error: data.num_workers: expected auto or an integer from 0 to 64, got 65"
    )


def test_train_speed_through_loader_processes_without_the_image_cache(tmp_path):
    done = _run("train_speed.py", "--num-workers", "1", "--no-cache-images", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0].startswith("cache_images=False num_workers=1 (1)")
