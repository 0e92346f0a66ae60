"""Small file helpers shared by the readers: JSON with located errors, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vlret.errors import DataError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"line {exc.lineno} column {exc.colno}", f"malformed JSON: {exc.msg}") from None


def read_text(path: str | Path, encoding: str = "utf-8", advice: str = "") -> str:
    """A text file's content; a UTF-8 byte-order mark is dropped, and a decoding error names the line
    (and ends with ``advice``, what the caller's user can do about it)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # UTF-8, and a leading byte-order mark is not part of the first line
    try:
        return data.decode(encoding)
    except LookupError:
        raise DataError(path, None, f"unknown text encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = f"not {encoding.removesuffix('-sig')} text ({exc.reason} at byte {exc.start})"
        raise DataError(path, f"line {line}", f"{problem}; {advice}" if advice else problem) from None


_DIGESTS: dict[tuple, str] = {}


def file_identity(path: str | Path) -> tuple:
    """What tells, without reading a file, that it is the one seen before: its device and inode (the file
    itself, under whatever path or link it is reached), its size, and the times of its last content change
    (mtime) and of its last change of any kind (ctime). A write moves the ctime even when the mtime is put
    back (``touch -d``, ``os.utime``, an rsync that keeps times), and nothing but the clock sets it, so a
    file rewritten in place, even at the same size and mtime, is a new one. Keys of in-process caches of
    what a file holds. One ``stat``: no path resolution, which cost 40 times more on hot paths."""
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's whole content (hex), remembered for the process by its
    :func:`file_identity`, so a cache lookup hashes each file once and an edited file again."""
    key = file_identity(path)
    if key not in _DIGESTS:
        with open(path, "rb") as fh:
            _DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _DIGESTS[key]


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see the old or the new content, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write pretty JSON atomically."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def written_with(settings_file: str | Path, settings: dict, *outputs: str | Path) -> bool:
    """Whether a generator's output is complete and was made with ``settings``: every file of ``outputs``
    exists and ``settings_file`` (written last, so that its presence marks completion) holds ``settings``."""
    settings_file = Path(settings_file)
    if not settings_file.is_file() or not all(Path(p).is_file() for p in outputs):
        return False
    return json.loads(settings_file.read_text()) == settings
