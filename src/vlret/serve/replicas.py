"""``vlret serve --workers N``: N replica processes (uvicorn's supervisor) answering on one listening socket.

The socket is bound here, as a TCP socket that says so (``IPPROTO_TCP``). uvicorn's own multi-worker path
binds it with protocol 0; accepted connections inherit that, asyncio then leaves Nagle's algorithm on, and
every keep-alive request after a connection's first waits for the client's delayed ACK: 44 ms per request
against 1.3 ms with one worker, on this machine (uvicorn issue 3149).

Each replica builds its app from the settings put in the environment (:func:`app_from_environment`) and
runs torch and FAISS on its share of the cores, so that replicas do not fight over them. On this 2-core
machine, where the load generator needs a core too, two replicas answered 0.98 to 1.31 times the requests
of one across runs (``bench/serve_load.py --replicas 2``); replicas pay off with cores to spare.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from vlret.errors import ConfigError
from vlret.serve.app import create_app

#: the environment variable that carries the replicas' settings (JSON)
SETTINGS_VARIABLE = "VLRET_SERVE_SETTINGS"


def app_from_environment():
    """A replica's app (uvicorn's factory), with its share of the cores. A replica that cannot start
    writes why to the failure file and stops the supervisor, which would otherwise start it again forever."""
    import faiss
    import torch

    shared = json.loads(os.environ[SETTINGS_VARIABLE])
    torch.set_num_threads(shared["threads"])
    faiss.omp_set_num_threads(shared["threads"])
    try:
        return create_app(**shared["settings"])
    except Exception as exc:  # any failure: the supervisor must stop, and say why
        Path(shared["failure_file"]).write_text(f"a replica could not start: {exc}")
        os.kill(os.getppid(), signal.SIGTERM)
        raise SystemExit(1) from None


def tcp_listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket whose accepted connections get ``TCP_NODELAY`` from asyncio."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_replicas(settings: dict, workers: int, host: str, port: int) -> None:
    """Serve ``create_app(**settings)`` from ``workers`` processes until stopped, the cores shared out;
    a ConfigError says why when a replica could not start."""
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    with tempfile.TemporaryDirectory(prefix="vlret-serve-") as folder:
        failure = Path(folder) / "failure.txt"
        shared = {"settings": settings, "threads": threads, "failure_file": str(failure)}
        os.environ[SETTINGS_VARIABLE] = json.dumps(shared)
        config = uvicorn.Config(
            "vlret.serve.replicas:app_from_environment",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="warning",
        )
        Multiprocess(config, sockets=[tcp_listener(host, port)]).run()
        if failure.is_file():
            raise ConfigError(failure.read_text())
