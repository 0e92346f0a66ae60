"""`vlret serve --workers N` (issue 28, section 3): N replica processes over one index version answer the
same results, and /health names the version and the replica that answered."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from vlret.index import build_index
from vlret.models import create_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def test_two_replicas_serve_one_index_version(synth_data, tmp_path):
    model = create_model("tiny-cnn", captions=["a red circle", "a blue square"])
    model.save(tmp_path / "model")
    index = build_index(
        str(tmp_path / "model"),
        tmp_path / "idx",
        images=synth_data.parent / "images" / "test",
        progress=False,
    )
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vlret.cli", "serve", str(index), "--workers", "2", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # bounds a server that never comes up; it takes seconds
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                health = httpx.get(f"{url}/health", timeout=5).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert health["version"] == index.resolve().name
        assert len(_children(server.pid)) >= 2  # the replica processes (uvicorn's supervisor is the parent)
        answers = [
            httpx.get(f"{url}/api/search", params={"q": "a red circle", "k": 3}, timeout=60).json()["results"]
            for _ in range(8)
        ]
        assert len(answers[0]) == 3 and all(a == answers[0] for a in answers)  # any replica: the same results
        replicas = {httpx.get(f"{url}/health", timeout=5).json()["replica"] for _ in range(8)}
        assert replicas <= set(_children(server.pid))
    finally:
        server.terminate()
        server.communicate(timeout=120)
