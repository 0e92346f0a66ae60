"""A folder claimed by one process at a time: ``with claimed(folder, "vlret bench"): ...``.

The claim is an advisory ``flock`` on ``folder/.lock``, taken without waiting; the kernel releases it when
the process ends, however it ends, so a killed run never leaves a stale claim behind. The file records
who holds it, for the message a second process gets. A folder the claim made and nothing was written to
is removed again, so a run refused at once leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlret.errors import ConfigError

LOCK_FILE = ".lock"


@contextmanager
def claimed(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``folder`` (made if missing) for the body; a folder another process holds is refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: expected a folder, found a file")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"{folder} is in use by {holder}; wait for it to finish, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})\n".encode(), 0)
        yield folder
    finally:
        if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:  # refused before writing anything
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
        os.close(fd)  # closing the descriptor releases the lock
