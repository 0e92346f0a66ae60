"""What an index was built from, file by file, and what changed since: the ground of an update.

Every item an index lists (kept or skipped) has a record: its path, the size and modification time of the
file that holds it (a tar shard for a webdataset member), a digest of its own bytes, and its row in the
index (``-1`` for a file that was skipped as unreadable). An update compares the files found now with
these records:

- same path, same size and mtime: unchanged (no read), unless ``verify`` asks for the digest of every file;
- same path, other size or mtime: the digest decides (a ``touch`` alone is no change);
- a new path whose digest some dropped record has (a rename or a move): its row moves to the new path;
- anything else new or changed is encoded; records whose path is gone are removed.

A file is keyed by the stat taken *before* it is read, so a file rewritten while it was being encoded has
another stat at the next update and is read again; its digest then decides.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlret.data.tar_members import read_member, tar_member
from vlret.index.columns import StringTable, write_columns

#: the records' table in a version folder (``files.path.*``, ``files.digest.*``, ``files.stat.npy``)
RECORDS = "files"
#: an update that would remove more than this share of the items is refused without --allow-mass-removal
MASS_REMOVAL_SHARE = 0.5
#: the digest of a file that changed while it was read: it matches nothing, so the file is read again
UNSTABLE = ""


@dataclass(frozen=True)
class FileKey:
    """What a file was when it was read: size and mtime (nanoseconds) of the file, digest of its bytes."""

    size: int
    mtime_ns: int
    digest: str


def _holder(path: Path) -> tuple[Path, str | None]:
    """The file whose stat stands for ``path`` (the tar for a member) and the member's name, if any."""
    if path.is_file():
        return path, None
    inside = tar_member(path)
    return (path, None) if inside is None else inside


def file_stat(path: str | Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the file holding ``path`` (following links); None when it is gone."""
    try:
        st = os.stat(path)  # one call for a plain file: an update stats every file of the collection
        if stat.S_ISREG(st.st_mode):
            return st.st_size, st.st_mtime_ns
    except OSError:
        pass
    inside = tar_member(Path(path))
    if inside is None:
        return None
    try:
        st = os.stat(inside[0])
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def content_digest(path: Path) -> str | None:
    """A digest of the item's bytes (the member's, inside a tar); None when it cannot be read."""
    holder, member = _holder(path)
    try:
        if member is not None:
            return hashlib.blake2b(read_member(holder, member), digest_size=16).hexdigest()
        with open(holder, "rb") as fh:
            return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except (OSError, ValueError) as exc:  # a DataError (no such member) is a ValueError
        del exc
        return None


def key_before_reading(path: Path) -> FileKey | None:
    """The key to record for a file about to be read (None when it is gone)."""
    found = file_stat(path)
    digest = content_digest(path)
    if found is None or digest is None:
        return None
    return FileKey(found[0], found[1], digest)


def checked_after_reading(path: Path, key: FileKey | None) -> FileKey | None:
    """``key``, or the same with an :data:`UNSTABLE` digest when the file changed while it was read."""
    if key is None or file_stat(path) == (key.size, key.mtime_ns):
        return key
    return FileKey(key.size, key.mtime_ns, UNSTABLE)


@dataclass
class Records:
    """The records of one version: per listed item, its path, key and row (``-1``: skipped)."""

    paths: list[str]
    keys: list[FileKey]
    rows: np.ndarray  # int64

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.keys) == len(self.rows)):
            raise ValueError("records of different lengths")

    def write(self, folder: Path) -> None:
        write_columns(folder, RECORDS, {"path": self.paths, "digest": [k.digest for k in self.keys]})
        stats = np.array([[k.size, k.mtime_ns] for k in self.keys], dtype=np.int64).reshape(-1, 2)
        np.save(folder / f"{RECORDS}.stat.npy", stats)
        np.save(folder / f"{RECORDS}.row.npy", np.asarray(self.rows, dtype=np.int64))

    @classmethod
    def read(cls, folder: Path) -> Records | None:
        """The records in a version folder; None for an index built before they were kept."""
        if not (folder / f"{RECORDS}.row.npy").is_file():
            return None
        table = StringTable.open(folder, RECORDS, ("path", "digest"), key=None)
        stats = np.load(folder / f"{RECORDS}.stat.npy")
        rows = np.load(folder / f"{RECORDS}.row.npy")
        paths, digests = table.columns["path"].all(), table.columns["digest"].all()
        keys = [FileKey(int(s), int(m), d) for (s, m), d in zip(stats.tolist(), digests, strict=True)]
        return cls(paths, keys, rows)


@dataclass
class Change:
    """What an update does, position by position of the new listing (``paths``).

    ``kept[n]`` is the old row that listed item ``n`` keeps (its file unchanged or moved), ``-1`` when it is
    encoded, ``-2`` when it stays skipped (a known unreadable file, unchanged); ``keys[n]`` its record's key
    when it is not encoded."""

    paths: list[str]
    kept: np.ndarray
    keys: list[FileKey | None]
    removed_rows: np.ndarray  # old rows no listed item keeps
    counts: dict[str, int] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)  # too fresh to read (``settle_seconds``)

    @property
    def to_encode(self) -> list[int]:
        return [n for n, row in enumerate(self.kept) if row == -1]

    @property
    def is_empty(self) -> bool:
        """Nothing to encode, move, remove or record anew: the index already holds this collection."""
        counts = self.counts
        return not (
            self.to_encode
            or len(self.removed_rows)
            or counts.get("moved")
            or counts.get("touched")
            or counts.get("relabelled")
        )


def plan_change(
    root: Path,
    paths: list[str],
    records: Records,
    verify: bool = False,
    settle_seconds: float = 0.0,
) -> Change:
    """Compare the items ``paths`` (relative to ``root``) found now with ``records``.

    ``settle_seconds`` > 0 defers files modified that recently (a copy still being written): a new one is
    left out, a changed one keeps its old row until a later update."""
    old = {p: n for n, p in enumerate(records.paths)}
    listed = set(paths)
    now_ns = time.time_ns()
    kept = np.full(len(paths), -1, dtype=np.int64)
    keys: list[FileKey | None] = [None] * len(paths)
    counts = dict.fromkeys(("unchanged", "touched", "edited", "new", "moved", "skipped_known"), 0)
    used: set[int] = set()
    deferred: list[str] = []
    pending_new: list[tuple[int, str]] = []  # (position, digest) of new paths, matched against dropped rows
    dropped_digests: dict[str, int] = {}
    for n, rel in enumerate(records.paths):
        if rel not in listed and records.rows[n] >= 0 and records.keys[n].digest:
            dropped_digests.setdefault(records.keys[n].digest, n)
    keep = np.ones(len(paths), dtype=bool)
    for n, rel in enumerate(paths):
        found = file_stat(os.path.join(root, rel))
        if found is None:  # gone since it was listed
            keep[n] = False
            continue
        r = old.get(rel)
        if settle_seconds > 0 and now_ns - found[1] < settle_seconds * 1e9:
            deferred.append(rel)
            if r is None:
                keep[n] = False
            else:
                kept[n], keys[n] = _carried(records, r), records.keys[r]
                used.add(r)
            continue
        if r is None:
            digest = content_digest(root / rel)
            if digest is not None and digest in dropped_digests:
                src = dropped_digests.pop(digest)
                kept[n], keys[n] = _carried(records, src), FileKey(found[0], found[1], digest)
                used.add(src)
                counts["moved"] += 1
            else:
                pending_new.append((n, digest or ""))
                counts["new"] += 1
            continue
        key = records.keys[r]
        same_stat = (key.size, key.mtime_ns) == found
        if same_stat and not verify:
            kept[n], keys[n] = _carried(records, r), key
            used.add(r)
            counts["skipped_known" if records.rows[r] < 0 else "unchanged"] += 1
            continue
        digest = content_digest(root / rel)
        if digest is not None and digest == key.digest and key.digest != UNSTABLE:
            kept[n], keys[n] = _carried(records, r), FileKey(found[0], found[1], digest)
            used.add(r)
            counts["skipped_known" if records.rows[r] < 0 else "unchanged" if same_stat else "touched"] += 1
        else:
            counts["edited"] += 1
    used_rows = {int(records.rows[r]) for r in used if records.rows[r] >= 0}
    all_rows = {int(row) for row in records.rows if row >= 0}
    removed = np.array(sorted(all_rows - used_rows), dtype=np.int64)
    positions = np.flatnonzero(keep)
    still_listed = {paths[n] for n in positions}
    counts["removed"] = sum(
        1
        for r, rel in enumerate(records.paths)
        if records.rows[r] >= 0 and rel not in still_listed and r not in used
    )
    change = Change(
        [paths[n] for n in positions],
        kept[positions],
        [keys[n] for n in positions],
        removed,
        counts,
        deferred,
    )
    return change


def _carried(records: Records, n: int) -> int:
    """The ``kept`` entry of a record carried forward: its row, or -2 for a known skipped file."""
    return int(records.rows[n]) if records.rows[n] >= 0 else -2


def mass_removal_problem(change: Change, n_items: int, allowed: bool) -> str | None:
    """Why an update must not go ahead: it would remove more than :data:`MASS_REMOVAL_SHARE` of the
    items (a folder unmounted or moved looks like every file removed); None when it may."""
    removed = change.counts.get("removed", 0)
    if allowed or n_items == 0 or removed / n_items <= MASS_REMOVAL_SHARE:
        return None
    return (
        f"the update would remove {removed} of the index's {n_items} items ({removed / n_items:.0%}, more "
        f"than {MASS_REMOVAL_SHARE:.0%}): is the folder unmounted or moved? If they were deleted on purpose, "
        "run again with --allow-mass-removal"
    )


def describe(change: Change) -> str:
    """One line: what an update encodes, keeps, moves and removes."""
    c = change.counts
    parts = [
        f"{len(change.to_encode)} to encode ({c.get('new', 0)} new, {c.get('edited', 0)} changed)",
        f"{c.get('unchanged', 0) + c.get('touched', 0)} unchanged",
    ]
    if c.get("moved"):
        parts.append(f"{c['moved']} moved")
    parts.append(f"{c.get('removed', 0)} removed")
    if change.deferred:
        parts.append(f"{len(change.deferred)} still being written (left for the next update)")
    return ", ".join(parts)
