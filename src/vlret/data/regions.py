"""Region features as media: an item whose path is ``FILE.npy#ROW`` is row ``ROW`` of an ``N x R x D`` array.

This is how precomputed region features (SCAN/BUTD "precomp" ``{split}_ims.npy``, or what ``vlret features
regions`` writes) stand in for image files: readers give such items ``{split}_ims.npy#{row}`` paths, and
models whose ``input_kind`` is ``"regions"`` receive ``[B, R, D]`` float32 arrays instead of pixels. The
arrays are memory-mapped, opened once per file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from vlret.errors import DataError

SEPARATOR = "#"


def region_path(file: str, row: int) -> str:
    """The media path of row ``row`` of a region-feature file."""
    return f"{file}{SEPARATOR}{row}"


def is_region_path(path: str | Path) -> bool:
    """True for ``FILE.npy#ROW`` media paths."""
    name, sep, row = str(path).rpartition(SEPARATOR)
    return bool(sep) and name.endswith(".npy") and row.isdigit()


def split_region_path(path: str | Path) -> tuple[Path, int]:
    name, _, row = str(path).rpartition(SEPARATOR)
    return Path(name), int(row)


@lru_cache(maxsize=32)
def open_region_file(file: Path) -> np.ndarray:
    """The ``N x R x D`` array of a region-feature file, memory-mapped; a wrong file is a clear error."""
    if not file.is_file():
        raise DataError(file, None, "region-feature file not found")
    try:
        array = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(file, None, f"cannot read as a .npy array ({exc})") from None
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            file,
            None,
            f"expected a float array of shape (images, regions, dim), got {array.dtype} {array.shape}",
        )
    return array


def load_regions(paths: list[Path], record: str | None = None) -> np.ndarray:
    """Region features ``[len(paths), R, D]`` (float32) of ``FILE.npy#ROW`` media paths."""
    rows = []
    for path in paths:
        if not is_region_path(path):
            raise DataError(path, record, "not a region-feature reference (FILE.npy#ROW)")
        file, row = split_region_path(path)
        array = open_region_file(file.resolve())
        if row >= len(array):
            raise DataError(file, f"row {row}", f"out of range: the file has {len(array)} rows")
        rows.append(array[row])
    shapes = {r.shape for r in rows}
    if len(shapes) > 1:
        raise DataError(paths[0], record, f"region arrays of different shapes in one batch: {sorted(shapes)}")
    return np.stack(rows).astype(np.float32, copy=False)


@dataclass(frozen=True)
class RegionInput:
    """The "transform" of a model that reads region features: nothing to do to them, ``dim`` wide.

    It stands where an :class:`~vlret.data.transforms.ImageTransform` stands in pixel models (model identity,
    cache keys); calling it on an image is an error, since such a model never sees pixels.
    """

    dim: int

    def __call__(self, image) -> np.ndarray:
        raise DataError("image", None, "this model reads region features (precomp data), not images")

    def to_dict(self) -> dict:
        return {"input": "regions", "dim": self.dim}
