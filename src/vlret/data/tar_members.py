"""Media stored inside tar files (webdataset shards), addressed as ``SHARD.tar/MEMBER``.

A path whose parent is a ``.tar`` file names a member of that tar. Its bytes are read by seeking to the
member's data (the tar's table of members is read once per process and kept), so encoding, thumbnails and
any item of a shard are reached without unpacking anything. Uncompressed tars only: a compressed one has no
offsets to seek to (webdataset shards are plain tars).
"""

from __future__ import annotations

import tarfile
import threading
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from vlret.data._io import file_identity
from vlret.errors import DataError

TAR_SUFFIX = ".tar"


def tar_member(path: str | Path) -> tuple[Path, str] | None:
    """``(tar file, member name)`` when ``path`` lies inside a tar file; None otherwise."""
    path = Path(path)
    for parent in path.parents:
        if parent.suffix.lower() == TAR_SUFFIX and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


@dataclass(frozen=True)
class _Table:
    members: dict[str, tuple[int, int]]  # name -> (data offset, size), in the tar's order
    repeated: tuple[str, ...]  # names that more than one member has (the last one is kept)
    complete: bool  # the tar ends with its end-of-archive marker (a copy cut short at a member does not)


@lru_cache(maxsize=64)
def _members(tar: Path, identity: tuple) -> _Table:
    """The tar's regular members; keyed by the file's identity so a rewritten tar is read again."""
    try:
        with tarfile.open(tar, mode="r:") as archive:
            found = [m for m in archive.getmembers() if m.isfile()]
            end = archive.offset  # where the members stop: the end-of-archive marker, two zero blocks
        with open(tar, "rb") as fh:
            fh.seek(end)
            marker = fh.read(2 * tarfile.BLOCKSIZE)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(tar, None, f"not a readable uncompressed tar ({exc})") from None
    members = {m.name: (m.offset_data, m.size) for m in found}
    repeated = tuple(sorted(name for name, count in Counter(m.name for m in found).items() if count > 1))
    complete = len(marker) == 2 * tarfile.BLOCKSIZE and not marker.strip(b"\0")
    return _Table(members, repeated, complete)


_lock = threading.Lock()


def _table(tar: str | Path) -> _Table:
    tar = Path(tar).resolve()
    with _lock:
        return _members(tar, file_identity(tar))


def member_table(tar: str | Path) -> dict[str, tuple[int, int]]:
    """The members of a tar (name -> (offset, size)), in the tar's order."""
    return _table(tar).members


def tar_problems(tar: str | Path) -> list[str]:
    """What is wrong with a tar that still reads: members that share a name (only the last is reached)
    and a missing end-of-archive marker (the file was cut short: members after the last whole one are
    lost)."""
    table = _table(tar)
    problems = []
    if table.repeated:
        names = ", ".join(table.repeated[:3])
        problems.append(f"{len(table.repeated)} member name(s) used twice, only the last one read ({names})")
    if not table.complete:
        problems.append(
            "it ends without the end-of-archive marker: cut short (members after the last whole one are lost)"
        )
    return problems


def read_member(tar: str | Path, name: str) -> bytes:
    """The bytes of member ``name`` of ``tar``."""
    table = member_table(tar)
    if name not in table:
        raise DataError(Path(tar) / name, None, f"no member {name!r} in {Path(tar).name}")
    offset, size = table[name]
    with open(tar, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)
