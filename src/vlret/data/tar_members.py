"""Media stored inside tar files (webdataset shards), addressed as ``SHARD.tar/MEMBER``.

A path whose parent is a ``.tar`` file names a member of that tar. Its bytes are read by seeking to the
member's data (the tar's table of members is read once per process and kept), so encoding, thumbnails and
any item of a shard are reached without unpacking anything. Uncompressed tars only: a compressed one has no
offsets to seek to (webdataset shards are plain tars).
"""

from __future__ import annotations

import tarfile
import threading
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


@lru_cache(maxsize=64)
def _members(tar: Path, identity: tuple) -> dict[str, tuple[int, int]]:
    """Each regular member's ``(data offset, size)``; keyed by the file's identity so a rewritten tar is
    read again."""
    try:
        with tarfile.open(tar, mode="r:") as archive:
            return {m.name: (m.offset_data, m.size) for m in archive.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as exc:
        raise DataError(tar, None, f"not a readable uncompressed tar ({exc})") from None


_lock = threading.Lock()


def member_table(tar: str | Path) -> dict[str, tuple[int, int]]:
    """The members of a tar (name -> (offset, size)), in the tar's order."""
    tar = Path(tar).resolve()
    with _lock:
        return _members(tar, file_identity(tar))


def read_member(tar: str | Path, name: str) -> bytes:
    """The bytes of member ``name`` of ``tar``."""
    table = member_table(tar)
    if name not in table:
        raise DataError(Path(tar) / name, None, f"no member {name!r} in {Path(tar).name}")
    offset, size = table[name]
    with open(tar, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)
