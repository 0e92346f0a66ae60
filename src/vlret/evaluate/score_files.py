"""Reading a precomputed score matrix (``.npy``) with errors that name the file and what was wrong."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vlret.errors import DataError

_EXPECTED = "a 2-D numeric array saved with numpy.save (captions x items)"


def load_score_matrix(path: str | Path) -> np.ndarray:
    """Memory-map a ``.npy`` score matrix; anything else (text, empty, truncated, ``.npz``, structured or
    object arrays, not 2-D) raises :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "score file not found")
    if zipfile.is_zipfile(path):
        raise DataError(path, None, f"an .npz archive; expected {_EXPECTED}")
    try:
        scores = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(path, None, f"not a readable .npy array ({reason}); expected {_EXPECTED}") from None
    if not isinstance(scores, np.ndarray):
        raise DataError(path, None, f"expected {_EXPECTED}")
    if scores.dtype.names is not None or scores.dtype.kind not in "fiub":
        raise DataError(path, None, f"holds {scores.dtype} values; expected {_EXPECTED}")
    if scores.ndim != 2 or 0 in scores.shape:
        raise DataError(path, None, f"has shape {scores.shape}; expected {_EXPECTED}")
    return scores


def check_score_shape(scores: np.ndarray, captions: int, items: int, split: str, source: str | None) -> None:
    """Refuse a score matrix that is not ``[captions, items]`` of the split it is evaluated on, naming
    ``source`` (the file) and both shapes."""
    expected = (captions, items)
    if scores.ndim != 2 or tuple(scores.shape) != expected:
        raise DataError(
            source or "scores",
            None,
            f"score matrix has shape {tuple(scores.shape)}; expected (captions, items) = {expected} "
            f"for split {split!r}",
        )
