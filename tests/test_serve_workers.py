"""`vlret serve --workers N` (issue 28, section 3): N replica processes over one index version answer the
same results, /health names the version and the replica that answered, and a rebuilt index is followed by
every replica without a failed request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
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
        [
            sys.executable,
            "-m",
            "vlret.cli",
            "serve",
            str(index),
            "--workers",
            "2",
            "--port",
            str(port),
            "--check-every",
            "0.2",
        ],  # fmt: skip
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
        assert health["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # each replica's share
        assert len(_children(server.pid)) >= 2  # the replica processes (uvicorn's supervisor is the parent)
        answers = [
            httpx.get(f"{url}/api/search", params={"q": "a red circle", "k": 3}, timeout=60).json()["results"]
            for _ in range(8)
        ]
        assert len(answers[0]) == 3 and all(a == answers[0] for a in answers)  # any replica: the same results
        replicas = {httpx.get(f"{url}/health", timeout=5).json()["replica"] for _ in range(8)}
        assert replicas <= set(_children(server.pid))
        _rebuilt_while_searched(url, tmp_path / "model", index, synth_data.parent / "images" / "train")
    finally:
        server.terminate()
        server.communicate(timeout=120)


def _rebuilt_while_searched(url: str, model: Path, index: Path, other_images: Path) -> None:
    """Rebuild the index from other images while a client searches without pause: every request is
    answered, and the replicas move to the new version."""
    old = index.resolve().name
    failures, answered, stop = [], [], threading.Event()

    def search_until_stopped() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                reply = client.get(f"{url}/api/search", params={"q": "a red circle", "k": 3})
                (answered if reply.status_code == 200 else failures).append(reply)

    searching = threading.Thread(target=search_until_stopped)
    searching.start()
    try:
        new = build_index(str(model), index, images=other_images, progress=False, rebuild=True).resolve().name
        deadline = time.monotonic() + 300  # bounds a replica that never moves; it takes a second
        in_a_row = 0
        while in_a_row < 10:  # ten answers in a row from the new version, whichever replicas gave them
            version = httpx.get(f"{url}/api/search", params={"q": "a blue square"}, timeout=60).json()
            in_a_row = in_a_row + 1 if version["version"] == new else 0
            assert time.monotonic() < deadline, "the replicas did not move to the new version"
            time.sleep(0.05)
    finally:
        stop.set()
        searching.join()
    assert failures == [] and len(answered) > 0
    assert {r.json()["version"] for r in answered} <= {old, new}
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["version"] == new and health["items"] == len(list(other_images.glob("*.png")))


def test_replicas_listen_on_a_socket_whose_connections_send_at_once():
    """The replicas' listener is a TCP socket that says so, so asyncio turns Nagle's algorithm off on each
    accepted connection (uvicorn's own multi-worker socket leaves it on: 44 ms per keep-alive request)."""
    import asyncio
    import socket as sockets

    from vlret.serve.replicas import tcp_listener

    listener = tcp_listener("127.0.0.1", 0)
    assert listener.proto == sockets.IPPROTO_TCP
    seen = []

    class Record(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(sockets.IPPROTO_TCP, sockets.TCP_NODELAY))
            transport.close()

    async def accept_one():
        server = await asyncio.get_running_loop().create_server(Record, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        while not seen:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(accept_one())
    assert seen == [1]
