"""Append-only JSON-lines stores for VISA's stage outputs, keyed by content.

Each record is ``{"key": ..., "value": ...}`` on one line, flushed as soon as it is computed, so a run killed
at any point keeps everything that finished; a line cut off by the kill is ignored when reading. A key is the
hash of the stage, the model's identity, the prompt version and the inputs, so a changed prompt or model
never reuses a stale answer. Sharded runs write ``{stage}.shard-{i}-of-{n}.jsonl``; every reader sees all
files of a stage, and :func:`merge_stage` folds the shards into ``{stage}.jsonl``.
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


def _read_lines(path: Path) -> dict[str, Any]:
    records: dict[str, Any] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
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
        for path in sorted(self.folder.glob(f"{stage}*.jsonl")):
            self._records.update(_read_lines(path))
        # A write cut off by a kill (or a full disk) leaves a partial last line: end it, so that the next
        # record starts on a line of its own instead of being glued to the fragment.
        self._needs_newline = (
            self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        )
        self.hits = 0
        self.added = 0

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> Any:
        return self._records[key]

    def lookup(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit (counted), ``(False, None)`` otherwise."""
        if key in self._records:
            self.hits += 1
            return True, self._records[key]
        return False, None

    def put(self, key: str, value: Any) -> None:
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._records:
                return
            try:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(("\n" if self._needs_newline else "") + line)
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
