"""Claims on units of work shared by several processes: a file created with ``O_EXCL`` per unit.

Exactly one process can create a given file, also across machines that share the folder over NFS v3+, so
the one that does holds the unit; it removes the file when the unit's result is stored. Index builds claim
their output chunks (:mod:`vlret.index.chunks`); VISA claims its units (:mod:`vlret.rerank.visa.pipeline`),
so that service replicas or shards over one cache compute each unit once.

A claim left by a process that died is stale. On the same host it is recognised (its process is gone) and
taken over; a claim from another host is waited for, since its process cannot be checked from here.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path


class Claims:
    """Claims named by strings, as files ``folder/.{name}.claim``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.host = socket.gethostname()

    def claim_file(self, name: str) -> Path:
        return self.folder / f".{name}.claim"

    def try_claim(self, name: str, done: Callable[[], bool] = lambda: False) -> bool:
        """Claim ``name``; False when a live process holds it or ``done()`` says its work is finished."""
        for _ in range(2):  # a second try after removing a stale claim
            if done():
                return False
            try:
                fd = os.open(self.claim_file(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self.stale(name):
                    return False
                self.claim_file(name).unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": self.host, "pid": os.getpid(), "since": time.time()}, f)
            if done():  # finished by another process between the check and the claim
                self.release(name)
                return False
            return True
        return False

    def held(self, name: str) -> bool:
        """Whether a claim on ``name`` exists (live or not yet judged stale)."""
        return self.claim_file(name).exists()

    def stale(self, name: str) -> bool:
        """Whether the claim on ``name`` was left by a process of this host that is gone."""
        try:
            holder = json.loads(self.claim_file(name).read_text())
        except (OSError, ValueError):
            return False  # being written right now, or gone: not ours to judge
        if holder.get("host") != self.host:
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def release(self, name: str) -> None:
        self.claim_file(name).unlink(missing_ok=True)
