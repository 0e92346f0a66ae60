"""One pass over a score block: its entries checked for NaN and infinity, compared with a threshold per
row and with thresholds per column, and counted along the other axis, while the block is in cache.

Ranking a (texts x items) block needs, for text->item, how many entries of each row reach that row's right
score, and for item->text, how many entries of each column pass that column's thresholds
(:mod:`vlret.evaluate.ranking`). Done as whole-block tensor operations, each comparison reads the 10 MB
block from memory again and writes a fresh mask: three comparisons cost a third of the matrix product
itself on this 2-core machine. Three kernels do it in one pass, with the same results:

- **compiled** (:mod:`vlret.evaluate.compiled_counts`, numba), for float32 and float64 blocks of at least
  :data:`COMPILED_MIN_ENTRIES` entries (galleries of about 2,000 items and more, in blocks of 512 rows):
  one loop reads every entry once, 4x faster than the slabs. Smaller blocks never import numba (0.34 s).
- **slabs** (numpy), for smaller CPU blocks, or where numba is missing: the block is cut into slabs of
  :data:`SLAB_ROWS` rows (640 kB at 5,000 float32 columns), every comparison runs on a slab while it is in
  cache, into one kept mask, and the mask is summed as bytes (twice numpy's speed for booleans).
- **torch**, for other dtypes (half precision) or devices.

Everything runs on one thread: shared among threads the slabs were slower here, because torch's OpenMP
threads keep spinning on the cores for a while after the matrix product (measured: 0.38 s against 0.33 s
for a 25,000 x 5,000 evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlret.errors import NonFiniteScoreError
from vlret.evaluate.compiled_counts import compiled_kernel

#: rows compared at a time by the numpy slabs: a slab of a 5,000-column float32 block is 640 kB
SLAB_ROWS = 32
#: the smallest block counted by the compiled loop; below it, numba's import costs more than it saves
COMPILED_MIN_ENTRIES = 1 << 20
KERNELS = ("auto", "compiled", "slabs", "torch")
#: band entries the compiled loop records per row of a block before the band is found again by numpy
_BAND_ROOM_PER_ROW = 8


def check_finite(block: torch.Tensor, row_offset: int = 0) -> None:
    """Raise :class:`NonFiniteScoreError` at the first NaN or infinite entry of ``block``."""
    # One summation is far cheaper than an element-wise test; a NaN or inf anywhere makes the sum
    # non-finite. Only then (or when large finite values overflow the sum) are the entries looked at.
    if block.numel() == 0 or torch.isfinite(block.sum()):
        return
    bad = (~torch.isfinite(block)).nonzero()
    if len(bad):
        row, col = (int(x) for x in bad[0])
        raise NonFiniteScoreError(row_offset + row, col, float(block[row, col]))


@dataclass(frozen=True)
class ColumnThreshold:
    """A threshold per column: an entry passes it when it is greater (``strict``) or greater or equal."""

    values: torch.Tensor  # [n_columns]
    strict: bool


@dataclass
class BlockCounts:
    """What :func:`count_block` found in one block of ``n`` rows."""

    rows: torch.Tensor | None  # [n] int64: entries of each row at or above the row's threshold
    columns: list[torch.Tensor]  # per column threshold: [n_columns] int64, the entries passing it
    own: list[np.ndarray]  # per column threshold: [n] bool, whether each row's own entry passes it
    # with ``between=(i, j)``: the entries passing threshold j but not threshold i, as (rows, columns, values)
    between: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def kernel_for(block: torch.Tensor, n_column_thresholds: int = 2) -> str:
    """Which kernel ``count_block(kernel="auto")`` uses for ``block``: ``compiled``, ``slabs`` or ``torch``."""
    if block.device.type != "cpu" or block.dtype not in (torch.float32, torch.float64):
        return "torch"
    if block.numel() >= COMPILED_MIN_ENTRIES and n_column_thresholds <= 2 and compiled_kernel() is not None:
        return "compiled"
    return "slabs"


def count_block(
    block: torch.Tensor,
    row_threshold: torch.Tensor | None,
    column_thresholds: list[ColumnThreshold],
    own_columns: np.ndarray,
    between: tuple[int, int] | None = None,
    row_offset: int = 0,
    kernel: str = "auto",
) -> BlockCounts:
    """Counts of ``block`` ``[n, m]``: per row, the entries ``>= row_threshold[row]`` (None: not counted);
    per column threshold, the entries of each column passing it, and whether the entry of each row in its
    own column (``own_columns[row]``) passes it. ``between=(i, j)`` also returns the entries that pass
    column threshold ``j`` and not ``i`` (a narrow band under ``i``), found while the rows are in cache.

    A NaN or infinite entry raises :class:`NonFiniteScoreError` with its row (``row_offset`` added) and
    column. ``kernel`` is ``auto`` (see :func:`kernel_for`) or one of ``compiled``, ``slabs``, ``torch``;
    all give the same counts (the band's entries in any order)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    if kernel == "auto":
        kernel = kernel_for(block, len(column_thresholds))
    if kernel == "torch" or block.numel() == 0:
        check_finite(block, row_offset)
        return _count_with_torch(block, row_threshold, column_thresholds, own_columns, between)
    if kernel == "compiled":
        return _count_compiled(block, row_threshold, column_thresholds, own_columns, between, row_offset)
    check_finite(block, row_offset)
    return _count_in_slabs(block, row_threshold, column_thresholds, own_columns, between)


def _as_at_least(threshold: ColumnThreshold, dtype: torch.dtype) -> np.ndarray:
    """The threshold as a ``>=`` test in ``dtype``: ``v > t`` is ``v >= nextafter(t, +inf)`` for finite v."""
    values = threshold.values.to(dtype).numpy()
    return np.nextafter(values, np.inf) if threshold.strict else np.ascontiguousarray(values)


def _count_compiled(
    block: torch.Tensor,
    row_threshold: torch.Tensor | None,
    column_thresholds: list[ColumnThreshold],
    own_columns: np.ndarray,
    between: tuple[int, int] | None,
    row_offset: int,
) -> BlockCounts:
    """:func:`count_block` by the compiled loop, which takes up to two column thresholds."""
    run = compiled_kernel()
    if run is None:
        raise RuntimeError("the compiled kernel needs numba, which cannot be imported here")
    if len(column_thresholds) > 2:
        raise ValueError("the compiled kernel takes at most two column thresholds")
    values = block.detach().contiguous().numpy()
    n, width = values.shape
    dtype = values.dtype
    # the loop always fills two column slots and a row count; unused ones get a threshold nothing passes
    # (+inf: an infinite entry is refused anyway)
    order = list(between) if between is not None else list(range(len(column_thresholds)))
    slots = [_as_at_least(column_thresholds[k], block.dtype) for k in order]
    slots += [np.full(width, np.inf, dtype=dtype)] * (2 - len(slots))
    if row_threshold is None:
        rows = np.full(n, np.inf, dtype=dtype)
    else:
        rows = np.ascontiguousarray(row_threshold.detach().to(block.dtype).numpy())
    row_counts = np.empty(n, dtype=np.int32)
    column_counts = [np.zeros(width, dtype=np.int32) for _ in slots]
    own = [np.empty(n, dtype=np.bool_) for _ in slots]
    room = _BAND_ROOM_PER_ROW * n if between is not None else 0
    band = (np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, dtype))
    own_columns = np.ascontiguousarray(own_columns, dtype=np.int64)
    n_band, first_bad_row = run(
        values, rows, slots[0], slots[1], own_columns, between is not None,
        row_counts, column_counts[0], column_counts[1], own[0], own[1], *band,
    )  # fmt: skip
    if first_bad_row >= 0:  # raises, unless large finite values overflowed the row's sum
        check_finite(block[first_bad_row:], row_offset + first_bad_row)
    by_threshold = {k: slot for slot, k in enumerate(order)}
    found = None
    if between is not None:
        found = tuple(part[:n_band] for part in band)
        if n_band > room:  # more entries in the band than there was room for: find them again
            found = _between_whole(values, slots[0], slots[1])  # the slots are in ``between``'s order
    return BlockCounts(
        None if row_threshold is None else torch.from_numpy(row_counts.astype(np.int64)),
        [
            torch.from_numpy(column_counts[by_threshold[k]].astype(np.int64))
            for k in range(len(column_thresholds))
        ],
        [own[by_threshold[k]] for k in range(len(column_thresholds))],
        found,
    )


def _between_whole(
    values: np.ndarray, upper: np.ndarray, lower: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries ``>= lower`` and not ``>= upper`` of a whole block, in row-major order."""
    r, c = np.nonzero((values >= lower[None, :]) & ~(values >= upper[None, :]))
    return r, c, values[r, c]


def _count_in_slabs(
    block: torch.Tensor,
    row_threshold: torch.Tensor | None,
    column_thresholds: list[ColumnThreshold],
    own_columns: np.ndarray,
    between: tuple[int, int] | None,
) -> BlockCounts:
    """:func:`count_block` with numpy, slab by slab (see the module docstring)."""
    values = block.detach().numpy()
    rows = None if row_threshold is None else row_threshold.to(block.dtype).numpy()
    columns = [(c.values.to(block.dtype).numpy()[None, :], c.strict) for c in column_thresholds]
    n, width = values.shape
    mask = np.empty((SLAB_ROWS, width), dtype=np.bool_)
    row_counts = None if rows is None else np.empty(n, dtype=np.int64)
    column_counts = [np.zeros(width, dtype=np.int64) for _ in columns]
    own = [np.empty(n, dtype=np.bool_) for _ in columns]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo in range(0, n, SLAB_ROWS):
        hi = min(lo + SLAB_ROWS, n)
        slab, slab_mask = values[lo:hi], mask[: hi - lo]
        as_bytes = slab_mask.view(np.uint8)
        if rows is not None:
            np.greater_equal(slab, rows[lo:hi, None], out=slab_mask)
            row_counts[lo:hi] = as_bytes.sum(1, dtype=np.int32)
        slab_counts = []
        for k, (thresholds, strict) in enumerate(columns):
            (np.greater if strict else np.greater_equal)(slab, thresholds, out=slab_mask)
            slab_counts.append(as_bytes.sum(0, dtype=np.int32))
            column_counts[k] += slab_counts[-1]
            own[k][lo:hi] = slab_mask[np.arange(hi - lo), own_columns[lo:hi]]
        if between is not None:
            found.append(_between(slab, lo, columns, slab_counts, *between))
    return BlockCounts(
        None if row_counts is None else torch.from_numpy(row_counts),
        [torch.from_numpy(c) for c in column_counts],
        own,
        None if between is None else tuple(np.concatenate(part) for part in zip(*found, strict=True)),
    )


def _passes(values: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    return values > thresholds if strict else values >= thresholds


def _between(
    slab: np.ndarray,
    row_offset: int,
    columns: list[tuple[np.ndarray, bool]],
    slab_counts: list[np.ndarray],
    upper: int,
    lower: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``slab`` passing column threshold ``lower`` and not ``upper``: only the columns whose
    two counts differ are looked at."""
    picked = np.flatnonzero(slab_counts[lower] != slab_counts[upper])
    sub = slab[:, picked]
    (low, low_strict), (high, high_strict) = columns[lower], columns[upper]
    inside = _passes(sub, low[:, picked], low_strict) & ~_passes(sub, high[:, picked], high_strict)
    r, c = np.nonzero(inside)
    return r + row_offset, picked[c], sub[r, c]


def _count_with_torch(
    block: torch.Tensor,
    row_threshold: torch.Tensor | None,
    column_thresholds: list[ColumnThreshold],
    own_columns: np.ndarray,
    between: tuple[int, int] | None = None,
) -> BlockCounts:
    rows = None
    if row_threshold is not None:
        rows = (block >= row_threshold.to(block.dtype)[:, None]).sum(1).cpu()
    index = torch.arange(len(block), device=block.device)
    own_index = torch.as_tensor(own_columns, device=block.device)
    counts, own, passed = [], [], []
    for c in column_thresholds:
        t = c.values.to(block.device, block.dtype)[None, :]
        passed.append(block > t if c.strict else block >= t)
        counts.append(passed[-1].sum(0).cpu())
        own.append(passed[-1][index, own_index].cpu().numpy())
    found = None
    if between is not None:
        r, c = (passed[between[1]] & ~passed[between[0]]).nonzero(as_tuple=True)
        found = (r.cpu().numpy(), c.cpu().numpy(), block[r, c].cpu().numpy())
    return BlockCounts(rows, counts, own, found)
