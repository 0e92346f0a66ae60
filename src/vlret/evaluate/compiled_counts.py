"""The counts of :func:`vlret.evaluate.block_counts.count_block` as one compiled loop (numba).

Every entry of a score block is read once: added to its row's sum (a NaN or infinity anywhere makes the
sum non-finite), compared with its row's threshold and with two thresholds of its column, and the
outcomes added to integer counters. numpy needs one pass over the block per comparison and one per sum;
here the loop is vectorised by LLVM and the whole block costs about what reading it costs (1.6 ms against
6.7 ms for numpy's slabs, for a 512 x 5,000 float32 block on this 2-core machine).

All comparisons are ``>=``: a strict threshold ``t`` is passed as ``nextafter(t, +inf)``, which is the same
test for every finite value (non-finite values are refused). numba is imported on first use only (0.34 s),
and the kernel is compiled once per machine and dtype (about 2 s) into numba's on-disk cache.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

Kernel = Callable[..., tuple[int, int]]


#: rows between two looks for band entries: a slab of a 5,000-column float32 block is 640 kB, in cache
SLAB_ROWS = 32


def _count_rows_and_columns(
    values, row_thresholds, first, second, own_columns, want_band,
    row_counts, first_counts, second_counts, own_first, own_second,
    band_rows, band_columns, band_values,
):  # fmt: skip
    """Fill the counters for a block ``values [n, m]``; return (entries passing ``second`` and not
    ``first``, recorded in the band arrays up to their length; the first row whose sum is not finite, or -1).

    Per row: ``row_counts[r]`` entries ``>= row_thresholds[r]``; per column, ``first_counts[c]`` entries
    ``>= first[c]`` and ``second_counts[c]`` entries ``>= second[c]`` (added to what the arrays hold);
    ``own_first[r]`` and ``own_second[r]``: whether the entry in the row's own column passes each.

    The band (``want_band``) is found without a test per entry: in a column where ``first >= second``, an
    entry passing ``first`` passes ``second``, so the column holds band entries in a slab of rows exactly
    when its two counts moved apart over the slab; where ``first < second`` no entry can be in the band.
    Only the columns whose counts moved apart are read again, for the slab's rows."""
    n, m = values.shape
    capacity = band_rows.shape[0]
    n_band = 0
    first_bad_row = -1
    apart = np.zeros(m, dtype=np.int32)
    for start in range(0, n, SLAB_ROWS):
        stop = min(start + SLAB_ROWS, n)
        if want_band:
            for c in range(m):
                apart[c] = second_counts[c] - first_counts[c]
        for r in range(start, stop):
            row = values[r]
            threshold = row_thresholds[r]
            at_or_above = np.int32(0)
            total = row[0] * 0  # the row's sum, in its dtype: a non-finite entry makes it non-finite
            for c in range(m):
                v = row[c]
                total += v
                at_or_above += np.int32(v >= threshold)
                first_counts[c] += np.int32(v >= first[c])
                second_counts[c] += np.int32(v >= second[c])
            if not np.isfinite(total) and first_bad_row < 0:
                first_bad_row = r
            row_counts[r] = at_or_above
            own = own_columns[r]
            own_first[r] = row[own] >= first[own]
            own_second[r] = row[own] >= second[own]
        if not want_band:
            continue
        for c in range(m):  # rare: a column whose counts moved apart holds entries in the band
            if second_counts[c] - first_counts[c] == apart[c]:
                continue
            for r in range(start, stop):
                v = values[r, c]
                if v >= second[c] and not v >= first[c]:
                    if n_band < capacity:
                        band_rows[n_band], band_columns[n_band], band_values[n_band] = r, c, v
                    n_band += 1
    return n_band, first_bad_row


@cache
def compiled_kernel() -> Kernel | None:
    """The compiled loop, or None where numba cannot be imported (the numpy slabs are used then)."""
    try:
        import numba
    except ImportError:
        return None
    # reassoc lets LLVM vectorise the row sums; no-NaN and no-inf assumptions are not made, the sums
    # exist to find them
    options = {"nogil": True, "boundscheck": False, "fastmath": {"reassoc"}, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(_count_rows_and_columns)
    except RuntimeError:  # no writable cache folder: compile in every process instead
        return numba.njit(cache=False, **options)(_count_rows_and_columns)
