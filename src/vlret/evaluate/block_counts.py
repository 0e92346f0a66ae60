"""One pass over a score block: its entries compared with a threshold per row and with thresholds per
column, and counted along the other axis, while the block is in cache.

Ranking a (texts x items) block needs, for text->item, how many entries of each row reach that row's right
score, and for item->text, how many entries of each column pass that column's thresholds
(:mod:`vlret.evaluate.ranking`). Done as whole-block tensor operations, each comparison reads the 10 MB
block from memory again and writes a fresh mask: three comparisons cost a third of the matrix product
itself on this 2-core machine. Here the block is cut into slabs of :data:`SLAB_ROWS` rows (1.3 MB at 5,000
float32 columns, which a core's cache holds), every comparison runs on a slab while it is in cache, into
one mask kept per thread, and the masks are summed as bytes (twice numpy's speed for booleans). The slabs
are shared among torch's threads: numpy releases the GIL in its loops.

Blocks of other dtypes (half precision) or on another device are counted by plain torch operations, with
the same results.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

#: rows compared at a time: a slab of a 5,000-column float32 block is 1.3 MB
SLAB_ROWS = 64

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, made once per size and kept (its threads wait idle between blocks)."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="vlret-block-counts")
        return _POOLS[threads]


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


def count_block(
    block: torch.Tensor,
    row_threshold: torch.Tensor | None,
    column_thresholds: list[ColumnThreshold],
    own_columns: np.ndarray,
) -> BlockCounts:
    """Counts of ``block`` ``[n, m]``: per row, the entries ``>= row_threshold[row]`` (None: not counted);
    per column threshold, the entries of each column passing it, and whether the entry of each row in its
    own column (``own_columns[row]``) passes it."""
    if block.device.type != "cpu" or block.dtype not in (torch.float32, torch.float64):
        return _count_with_torch(block, row_threshold, column_thresholds, own_columns)
    values = block.numpy()
    rows = None if row_threshold is None else row_threshold.to(block.dtype).numpy()
    columns = [(c.values.to(block.dtype).numpy()[None, :], c.strict) for c in column_thresholds]
    n = len(values)
    threads = max(1, min(torch.get_num_threads(), n // SLAB_ROWS))
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    if threads == 1:
        results = [_count_rows(values, rows, columns, own_columns, *parts[0])]
    else:
        pool = _pool(threads)
        futures = [pool.submit(_count_rows, values, rows, columns, own_columns, lo, hi) for lo, hi in parts]
        results = [f.result() for f in futures]
    return BlockCounts(
        None if rows is None else torch.from_numpy(np.concatenate([r[0] for r in results])),
        [torch.from_numpy(sum(r[1][k] for r in results)) for k in range(len(columns))],
        [np.concatenate([r[2][k] for r in results]) for k in range(len(columns))],
    )


_MASKS = threading.local()


def _mask(columns: int) -> np.ndarray:
    """This thread's mask of ``SLAB_ROWS x columns`` booleans, kept between calls."""
    mask = getattr(_MASKS, "mask", None)
    if mask is None or mask.shape != (SLAB_ROWS, columns):
        mask = _MASKS.mask = np.empty((SLAB_ROWS, columns), dtype=np.bool_)
    return mask


def _count_rows(
    values: np.ndarray,
    rows: np.ndarray | None,
    columns: list[tuple[np.ndarray, bool]],
    own_columns: np.ndarray,
    start: int,
    stop: int,
) -> tuple[np.ndarray | None, list[np.ndarray], list[np.ndarray]]:
    """The counts of rows ``start:stop``, a slab at a time."""
    width = values.shape[1]
    mask = _mask(width)
    row_counts = None if rows is None else np.empty(stop - start, dtype=np.int64)
    column_counts = [np.zeros(width, dtype=np.int64) for _ in columns]
    own = [np.empty(stop - start, dtype=np.bool_) for _ in columns]
    for lo in range(start, stop, SLAB_ROWS):
        hi = min(lo + SLAB_ROWS, stop)
        slab, slab_mask = values[lo:hi], mask[: hi - lo]
        bytes_ = slab_mask.view(np.uint8)
        if rows is not None:
            np.greater_equal(slab, rows[lo:hi, None], out=slab_mask)
            row_counts[lo - start : hi - start] = bytes_.sum(1, dtype=np.int32)
        for k, (thresholds, strict) in enumerate(columns):
            (np.greater if strict else np.greater_equal)(slab, thresholds, out=slab_mask)
            column_counts[k] += bytes_.sum(0, dtype=np.int32)
            own[k][lo - start : hi - start] = slab_mask[np.arange(hi - lo), own_columns[lo:hi]]
    return row_counts, column_counts, own


def _count_with_torch(
    block: torch.Tensor,
    row_threshold: torch.Tensor | None,
    column_thresholds: list[ColumnThreshold],
    own_columns: np.ndarray,
) -> BlockCounts:
    rows = None
    if row_threshold is not None:
        rows = (block >= row_threshold.to(block.dtype)[:, None]).sum(1).cpu()
    index = torch.arange(len(block), device=block.device)
    own_index = torch.as_tensor(own_columns, device=block.device)
    counts, own = [], []
    for c in column_thresholds:
        t = c.values.to(block.device, block.dtype)[None, :]
        passed = block > t if c.strict else block >= t
        counts.append(passed.sum(0).cpu())
        own.append(passed[index, own_index].cpu().numpy())
    return BlockCounts(rows, counts, own)
