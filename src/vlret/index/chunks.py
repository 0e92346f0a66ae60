"""The chunks of an index build, claimed so that any number of builders on one output cooperate.

A build's unit of work is one output chunk, ``INDEX.building/chunks/NNNNN/``, written to a temporary
folder of its own and renamed into place when complete. Before encoding a chunk a builder claims it
(``.NNNNN.claim``, :mod:`vlret.claims`) and removes the claim when the chunk is in place. So builders
started together, slurm array tasks (``--shard I/N``) or a rerun after a kill never encode a chunk twice and
never trip over each other's temporary files; a dead builder's chunk is taken over.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from vlret.claims import Claims

#: seconds between looks at chunks that other builders are encoding
POLL_SECONDS = 0.5


def chunk_name(c: int) -> str:
    return f"{c:05d}"


class ChunkClaims:
    """Claims on the chunks of ``folder`` (``INDEX.building/chunks``); a chunk is done when its folder is
    in place."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.claims = Claims(folder)

    def done(self, c: int) -> bool:
        return (self.folder / chunk_name(c)).is_dir()

    def try_claim(self, c: int) -> bool:
        """Claim chunk ``c``; False when another live builder holds it (or it is done)."""
        return self.claims.try_claim(chunk_name(c), lambda: self.done(c))

    def release(self, c: int) -> None:
        self.claims.release(chunk_name(c))

    def publish(self, c: int, tmp: Path) -> None:
        """Move a finished chunk's temporary folder into place and drop the claim."""
        os.replace(tmp, self.folder / chunk_name(c))
        self.release(c)

    def temporary(self, c: int) -> Path:
        """A temporary folder no other builder uses (its name carries this process)."""
        return self.folder / f".{chunk_name(c)}.{self.claims.host}.{os.getpid()}.tmp"


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
