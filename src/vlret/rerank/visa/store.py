"""Append-only JSON-lines stores for VISA's stage outputs, keyed by content.

Each record is ``{"key": ..., "value": ...}`` on one line, flushed as soon as it is computed, so a run killed
at any point keeps everything that finished; a line cut off by the kill is ignored when reading. A key is the
hash of the stage, the model's identity, the prompt version and the inputs, so a changed prompt or model
never reuses a stale answer. Sharded runs write ``{stage}.shard-{i}-of-{n}.jsonl``; every reader sees all
files of a stage, and :func:`merge_stage` folds the shards into ``{stage}.jsonl``.

The store is live: a key it does not hold sends it back to the files for the lines other processes
appended since it last read (service replicas, or shards, over one cache folder), so a unit another process
finished is not computed again. A record is appended with one ``write`` on an ``O_APPEND`` descriptor, so
lines of concurrent writers never interleave.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def _parse_lines(data: bytes) -> dict[str, Any]:
    records: dict[str, Any] = {}
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the tail of a killed write
        if isinstance(record, dict) and "key" in record and "value" in record:
            records[record["key"]] = record["value"]
    return records


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class StageStore:
    """The records of one stage: everything on disk (all shards) plus what this process adds."""

    def __init__(self, folder: str | Path, stage: str, shard: tuple[int, int] = (0, 1)):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        index, count = shard
        name = f"{stage}.jsonl" if count == 1 else f"{stage}.shard-{index}-of-{count}.jsonl"
        self.path = self.folder / name
        self._lock = threading.Lock()
        self._records: dict[str, Any] = {}
        self._read_up_to: dict[Path, int] = {}  # per file: the bytes read, up to the last complete line
        self._read_new_lines()
        # A write cut off by a kill (or a full disk) leaves a partial last line: end it, so that the next
        # record starts on a line of its own instead of being glued to the fragment.
        self._needs_newline = (
            self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        )
        self.hits = 0
        self.added = 0

    def _read_new_lines(self) -> None:
        """Take in the complete lines every file of the stage gained since the last read."""
        for path in sorted(self.folder.glob(f"{self.stage}*.jsonl")):
            start = self._read_up_to.get(path, 0)
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # a shard file merged away meanwhile
                continue
            if size <= start:
                continue
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read(size - start)
            complete = data.rfind(b"\n") + 1  # a line still being written is read next time
            self._records.update(_parse_lines(data[:complete]))
            self._read_up_to[path] = start + complete

    def __contains__(self, key: str) -> bool:
        if key in self._records:
            return True
        with self._lock:
            self._read_new_lines()  # another process may have stored it since
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> Any:
        return self._records[key]

    def lookup(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit (counted), ``(False, None)`` otherwise."""
        if key in self:
            self.hits += 1
            return True, self._records[key]
        return False, None

    def put(self, key: str, value: Any) -> None:
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._records:
                return
            data = (("\n" if self._needs_newline else "") + line).encode("utf-8")
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    written = os.write(fd, data)  # one write: concurrent appenders' lines stay whole
                finally:
                    os.close(fd)
                if written != len(data):
                    raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
            except OSError:
                self._needs_newline = True  # the line may be cut: end it before the next one
                raise
            self._needs_newline = False
            self._records[key] = value
            self.added += 1


def merge_stage(folder: str | Path, stage: str) -> int:
    """Fold ``{stage}.shard-*.jsonl`` into ``{stage}.jsonl`` (atomically) and remove the shards."""
    folder = Path(folder)
    shards = sorted(folder.glob(f"{stage}.shard-*.jsonl"))
    if not shards:
        return 0
    merged = StageStore(folder, stage)  # reads the main file and every shard
    tmp = folder / f".{stage}.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for key in merged._records:
            fh.write(json.dumps({"key": key, "value": merged.get(key)}, ensure_ascii=False) + "\n")
    os.replace(tmp, folder / f"{stage}.jsonl")
    for path in shards:
        path.unlink()
    return len(merged)
