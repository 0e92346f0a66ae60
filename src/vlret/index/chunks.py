"""The chunks of an index build, claimed so that any number of builders on one output cooperate.

A build's unit of work is one output chunk, ``INDEX.building/chunks/NNNNN/``, written to a temporary
folder of its own and renamed into place when complete. Before encoding a chunk a builder claims it by
creating ``.NNNNN.claim`` with ``O_EXCL``, which exactly one process can do (also across machines that share
the folder over NFS v3+), and removes the claim when the chunk is in place. So builders started together,
slurm array tasks (``--shard I/N``) or a rerun after a kill never encode a chunk twice and never trip over
each other's temporary files.

A claim left by a builder that died is stale. On the same host it is recognised (its process is gone) and
taken over; a claim from another host is waited for, since its process cannot be checked from here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

#: seconds between looks at chunks that other builders are encoding
POLL_SECONDS = 0.5


def chunk_name(c: int) -> str:
    return f"{c:05d}"


class ChunkClaims:
    """Claims on the chunks of ``folder`` (``INDEX.building/chunks``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.host = socket.gethostname()

    def done(self, c: int) -> bool:
        return (self.folder / chunk_name(c)).is_dir()

    def _claim_file(self, c: int) -> Path:
        return self.folder / f".{chunk_name(c)}.claim"

    def try_claim(self, c: int) -> bool:
        """Claim chunk ``c``; False when another live builder holds it (or it is done)."""
        for _ in range(2):  # a second try after removing a stale claim
            if self.done(c):
                return False
            try:
                fd = os.open(self._claim_file(c), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._stale(c):
                    return False
                self._claim_file(c).unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": self.host, "pid": os.getpid(), "since": time.time()}, f)
            if self.done(c):  # finished by another builder between the check and the claim
                self.release(c)
                return False
            return True
        return False

    def _stale(self, c: int) -> bool:
        try:
            holder = json.loads(self._claim_file(c).read_text())
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

    def release(self, c: int) -> None:
        self._claim_file(c).unlink(missing_ok=True)

    def publish(self, c: int, tmp: Path) -> None:
        """Move a finished chunk's temporary folder into place and drop the claim."""
        os.replace(tmp, self.folder / chunk_name(c))
        self.release(c)

    def temporary(self, c: int) -> Path:
        """A temporary folder no other builder uses (its name carries this process)."""
        return self.folder / f".{chunk_name(c)}.{self.host}.{os.getpid()}.tmp"


def encode_claimed(
    claims: ChunkClaims,
    chunks: Iterable[int],
    encode: Callable[[int, Path], None],
    wait_for_others: bool,
) -> list[int]:
    """Encode each chunk of ``chunks`` that is neither done nor claimed (``encode(c, tmp)`` writes it into
    the temporary folder ``tmp``); returns the chunks this process encoded. With ``wait_for_others``,
    chunks that other builders hold are waited for (and taken over when their holder dies here)."""
    encoded: list[int] = []
    pending = list(chunks)
    while pending:
        waiting = []
        for c in pending:
            if claims.done(c):
                continue
            if not claims.try_claim(c):
                if not claims.done(c):
                    waiting.append(c)
                continue
            tmp = claims.temporary(c)
            try:
                tmp.mkdir()
                encode(c, tmp)
                claims.publish(c, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                claims.release(c)
                raise
            encoded.append(c)
        if not wait_for_others or not waiting:
            break
        pending = waiting
        time.sleep(POLL_SECONDS)
    return encoded
