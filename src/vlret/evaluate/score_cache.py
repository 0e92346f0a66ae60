"""Score matrices of heavy similarity heads, kept on disk and filled region by region.

A head that is not a dot product (SGR, SAF, MaxSim) costs a cross-attention per (caption, item) pair, so its
``[captions, items]`` matrix of a split is worth keeping: a second protocol on the same captions (COCO 1K's
folds are diagonal blocks of the COCO 5K matrix) slices it, and an ensemble (SGRAF = the mean of an SGR and a
SAF model's matrices) averages stored matrices without encoding anything again.

An entry is a folder: ``scores.npy`` (float32, memory-mapped, the full shape) and ``filled.json``, the
rectangles ``[row_start, row_stop, col_start, col_stop]`` already computed. Rows are filled in chunks and each
chunk is recorded once written, so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SCORES_FILE = "scores.npy"
FILLED_FILE = "filled.json"


def _covered(rects: list[list[int]], rows: tuple[int, int], cols: tuple[int, int]) -> bool:
    """True when the union of ``rects`` spanning all of ``cols`` covers every row in ``rows``."""
    spans = sorted((r0, r1) for r0, r1, c0, c1 in rects if c0 <= cols[0] and c1 >= cols[1])
    reached = rows[0]
    for r0, r1 in spans:
        if r0 > reached:
            break
        reached = max(reached, r1)
        if reached >= rows[1]:
            return True
    return reached >= rows[1]


class ScoreMatrix:
    """A ``[rows, cols]`` float32 matrix in ``folder`` (created on first use), filled on demand."""

    def __init__(self, folder: str | Path, shape: tuple[int, int], meta: dict | None = None):
        self.folder = Path(folder)
        self.shape = tuple(int(n) for n in shape)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / SCORES_FILE
        if path.is_file():
            self.array = np.load(path, mmap_mode="r+")
            if self.array.shape != self.shape:
                raise ValueError(
                    f"{path}: a stored matrix of shape {self.array.shape}, expected {self.shape}"
                )
        else:
            tmp = self.folder / f".{SCORES_FILE}.{os.getpid()}"
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=self.shape).flush()
            os.replace(tmp, path)
            self.array = np.load(path, mmap_mode="r+")
            (self.folder / "meta.json").write_text(json.dumps(meta or {}, indent=2) + "\n")
        filled = self.folder / FILLED_FILE
        self.rects: list[list[int]] = json.loads(filled.read_text()) if filled.is_file() else []

    def covers(self, rows: tuple[int, int], cols: tuple[int, int]) -> bool:
        return _covered(self.rects, rows, cols)

    def fill(
        self,
        rows: tuple[int, int],
        cols: tuple[int, int],
        compute: Callable[[int, int], torch.Tensor],
        chunk: int,
    ) -> int:
        """Compute the missing parts of ``rows x cols`` by row chunks (``compute(r0, r1)`` returns the
        block ``[r1 - r0, cols]``); returns the number of rows computed."""
        computed = 0
        for start in range(rows[0], rows[1], chunk):
            stop = min(start + chunk, rows[1])
            if self.covers((start, stop), cols):
                continue
            self.array[start:stop, cols[0] : cols[1]] = compute(start, stop).numpy()
            self.array.flush()
            self._record([start, stop, cols[0], cols[1]])
            computed += stop - start
        return computed

    def _record(self, rect: list[int]) -> None:
        self.rects.append(rect)
        tmp = self.folder / f".{FILLED_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(self.rects))
        os.replace(tmp, self.folder / FILLED_FILE)

    def block(self, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[rows[0] : rows[1], cols[0] : cols[1]]))


def default_score_dir() -> Path:
    from vlret.evaluate.encode import default_cache_dir

    return default_cache_dir().parent / "scores"
