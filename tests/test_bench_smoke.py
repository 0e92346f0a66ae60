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
