"""String columns on disk, memory-mapped: the items of an index (id, path) read without loading them.

A table of ``N`` rows keeps each field as two files: ``NAME.FIELD.utf8`` (every value's UTF-8 bytes, one
after another) and ``NAME.FIELD.offsets.npy`` (``N + 1`` int64 offsets into it). Looking up an id goes
through ``NAME.id.order.npy``, the row numbers sorted by id, by binary search. Nothing is read until it is
asked for, so a searcher over a million items holds the pages it touched, not a million Python dicts (a
JSON list of 1M items held 418 MiB).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_columns(
    folder: Path, name: str, columns: dict[str, Sequence[str]], sort_by: str | None = None
) -> None:
    """Write ``columns`` (field -> values, all the same length) as table ``name`` in ``folder``;
    ``sort_by`` also writes the order that :meth:`StringTable.number_of` searches."""
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    for field, values in columns.items():
        encoded = [value.encode("utf-8") for value in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        np.save(folder / f"{name}.{field}.offsets.npy", offsets)
        (folder / f"{name}.{field}.utf8").write_bytes(b"".join(encoded))
    if sort_by is not None:
        order = np.array(
            sorted(range(len(columns[sort_by])), key=columns[sort_by].__getitem__), dtype=np.int64
        )
        np.save(folder / f"{name}.{sort_by}.order.npy", order)


class StringColumn:
    """One memory-mapped string field: ``column[n]``."""

    def __init__(self, folder: Path, name: str, field: str):
        self.offsets = np.load(folder / f"{name}.{field}.offsets.npy", mmap_mode="r")
        blob = folder / f"{name}.{field}.utf8"
        self.blob = (
            np.memmap(blob, dtype=np.uint8, mode="r") if blob.stat().st_size else np.zeros(0, np.uint8)
        )
        if len(self.offsets) == 0 or int(self.offsets[-1]) != len(self.blob):
            raise ValueError(f"{blob.name} does not hold the bytes its offsets describe")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, n: int) -> str:
        start, stop = int(self.offsets[n]), int(self.offsets[n + 1])
        return bytes(self.blob[start:stop]).decode("utf-8")

    def all(self) -> list[str]:
        """Every value, in one read (for a whole-table pass: an update's records)."""
        blob, offsets = bytes(self.blob), np.asarray(self.offsets).tolist()
        return [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


class StringTable:
    """Rows of string fields: ``table[n]`` is a dict, ``table.number_of(id)`` the row with that id."""

    def __init__(
        self,
        columns: dict[str, StringColumn | list[str]],
        order: np.ndarray | None = None,
        key: str | None = "id",
    ):
        self.columns, self.order, self.key = columns, order, key
        lengths = {len(c) for c in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"the fields hold different numbers of rows: {sorted(lengths)}")
        self._length = lengths.pop()

    @classmethod
    def open(cls, folder: Path, name: str, fields: tuple[str, ...], key: str | None = "id") -> StringTable:
        """Table ``name`` in ``folder``; ``key=None`` for a table written without a sort order (no
        :meth:`number_of`)."""
        order = None if key is None else np.load(folder / f"{name}.{key}.order.npy", mmap_mode="r")
        return cls({f: StringColumn(folder, name, f) for f in fields}, order, key)

    @classmethod
    def from_json(cls, path: Path, fields: tuple[str, ...], key: str = "id") -> StringTable:
        """An index written before the columns (``items.json``), held in memory."""
        rows = json.loads(path.read_text())
        columns = {f: [row[f] for row in rows] for f in fields}
        order = np.array(sorted(range(len(rows)), key=columns[key].__getitem__), dtype=np.int64)
        return cls(columns, order, key)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, n: int) -> dict[str, str]:
        if not -self._length <= n < self._length:
            raise IndexError(n)
        n %= self._length
        return {field: column[n] for field, column in self.columns.items()}

    def __iter__(self):
        return (self[n] for n in range(self._length))

    def number_of(self, key: str) -> int:
        """The row whose ``key`` field is ``key`` (binary search over the sorted order); KeyError if none."""
        if self.order is None:
            raise TypeError("this table was written without a sort order")
        values = self.columns[self.key]
        low, high = 0, len(self.order)
        while low < high:
            middle = (low + high) // 2
            if values[int(self.order[middle])] < key:
                low = middle + 1
            else:
                high = middle
        if low < len(self.order) and values[int(self.order[low])] == key:
            return int(self.order[low])
        raise KeyError(key)
