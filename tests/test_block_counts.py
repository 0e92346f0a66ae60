"""One pass over a score block (issue 38, P1): counts against row and column thresholds by each kernel
(the compiled loop, numpy's slabs, torch), equal to plain whole-block comparisons; the kernel chosen on
each side of its size limit; non-finite entries and the band's guards; the reused score buffer and the
height of the dot-product blocks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from vlret.errors import NonFiniteScoreError
from vlret.evaluate import block_counts, compiled_counts
from vlret.evaluate.block_counts import ColumnThreshold, count_block, kernel_for
from vlret.evaluate.ranking import dot_block_fn, dot_chunk, pairwise_dot, rank_blocks, rank_embeddings

KERNELS = ["compiled", "slabs", "torch"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_hand_worked_block(kernel):
    block = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.1, 0.2, 0.8]])
    own = np.array([0, 1, 2])
    found = count_block(
        block,
        block[torch.arange(3), torch.from_numpy(own)],
        [
            ColumnThreshold(torch.tensor([0.5, 0.2, 0.3]), strict=True),
            ColumnThreshold(torch.tensor([0.5, 0.2, 0.3]), False),
        ],
        own,
        kernel=kernel,
    )
    # rows: entries >= own score: row 0 has .5 and .5 -> 2; row 1 only .9 -> 1; row 2 only .8 -> 1
    assert found.rows.tolist() == [2, 1, 1]
    # columns > (.5, .2, .3): column 0 none; column 1 .5 and .9; column 2 .8 -> [0, 2, 1]; >=: [1, 3, 2]
    assert found.columns[0].tolist() == [0, 2, 1] and found.columns[1].tolist() == [1, 3, 2]
    # own entries (0,0)=.5, (1,1)=.9, (2,2)=.8: > thresholds [F, T, T]; >= [T, T, T]
    assert found.own[0].tolist() == [False, True, True] and found.own[1].tolist() == [True, True, True]
    # between: passing >= and not >, i.e. equal to the column's threshold: (0,0)=.5, (1,2)=.3, (2,1)=.2
    assert found.between is None
    thresholds = torch.tensor([0.5, 0.2, 0.3])
    band = count_block(
        block,
        None,
        [ColumnThreshold(thresholds, True), ColumnThreshold(thresholds, False)],
        own,
        between=(0, 1),
        kernel=kernel,
    )
    rows, columns, values = band.between
    order = np.argsort(rows)  # the kernels may list the band in another order
    assert rows[order].tolist() == [0, 1, 2] and columns[order].tolist() == [0, 2, 1]
    np.testing.assert_allclose(values[order], [0.5, 0.3, 0.2])


def _plain(block: np.ndarray, rows: np.ndarray, columns: np.ndarray, own: np.ndarray):
    """The same counts by whole-block comparisons, entry by entry in numpy."""
    at_or_above = block >= rows[:, None]
    strict, loose = block > columns[None, :], block >= columns[None, :]
    picked = (np.arange(len(block)), own)
    return at_or_above.sum(1), strict.sum(0), loose.sum(0), strict[picked], loose[picked]


@pytest.mark.parametrize(
    ("dtype", "kernel"),
    [(torch.float32, k) for k in KERNELS] + [(torch.float64, k) for k in KERNELS] + [(torch.float16, "auto")],
)
@pytest.mark.parametrize("n_rows", [1, block_counts.SLAB_ROWS, 3 * block_counts.SLAB_ROWS + 5])
def test_counts_equal_whole_block_comparisons_with_ties(dtype, kernel, n_rows):
    rng = np.random.default_rng(n_rows)
    block = torch.from_numpy(rng.integers(0, 6, (n_rows, 37)) / 5).to(dtype)  # a coarse grid: many ties
    own = rng.integers(0, 37, n_rows)
    rows = block[torch.arange(n_rows), torch.from_numpy(own)]
    columns = torch.from_numpy(rng.integers(0, 6, 37) / 5).to(dtype)
    pair = [ColumnThreshold(columns, True), ColumnThreshold(columns, False)]
    found = count_block(block, rows, pair, own, between=(0, 1), kernel=kernel)
    without_rows = count_block(block, None, [ColumnThreshold(columns, False)], own, kernel=kernel)
    expected = _plain(block.double().numpy(), rows.double().numpy(), columns.double().numpy(), own)
    assert found.rows.tolist() == expected[0].tolist()
    assert (
        found.columns[0].tolist() == expected[1].tolist()
        and found.columns[1].tolist() == expected[2].tolist()
    )
    assert found.own[0].tolist() == expected[3].tolist() and found.own[1].tolist() == expected[4].tolist()
    assert without_rows.rows is None and without_rows.columns[0].tolist() == expected[2].tolist()
    on_threshold = np.argwhere(block.double().numpy() == columns.double().numpy()[None, :])  # >= and not >
    rows_found, columns_found, values = found.between
    assert sorted(zip(rows_found.tolist(), columns_found.tolist(), strict=True)) == [
        tuple(x) for x in on_threshold.tolist()
    ]
    np.testing.assert_array_equal(values.astype(np.float64), columns.double().numpy()[columns_found])


def test_reused_blocks_share_one_buffer_and_fresh_ones_do_not():
    queries, gallery = torch.randn(10, 4), torch.randn(6, 4)
    fresh, reused = dot_block_fn(queries, gallery), dot_block_fn(queries, gallery, reuse=True)
    a, b = fresh(0, 4), fresh(4, 8)
    assert a.data_ptr() != b.data_ptr()
    first = reused(0, 4).clone()
    torch.testing.assert_close(first, queries[:4] @ gallery.T)
    second = reused(4, 6)  # a shorter block reuses the buffer's first rows
    assert second.data_ptr() == reused(0, 4).data_ptr() and second.shape == (2, 6)
    torch.testing.assert_close(reused(4, 6), queries[4:6] @ gallery.T)
    grads = dot_block_fn(queries.requires_grad_(), gallery, reuse=True)
    assert grads(0, 2).requires_grad  # a block that needs gradients is never written into a buffer


def test_ranks_from_reused_blocks_equal_ranks_from_fresh_ones():
    gen = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(1100, 16, generator=gen), dim=1)
    items = torch.nn.functional.normalize(torch.randn(220, 16, generator=gen), dim=1)
    text_to_item = np.repeat(np.arange(220), 5)
    fresh = rank_blocks(dot_block_fn(texts, items), text_to_item, 220, chunk=128)
    reused = rank_embeddings(texts, items, text_to_item, chunk=128)
    np.testing.assert_array_equal(fresh.t2i, reused.t2i)
    np.testing.assert_array_equal(fresh.i2t, reused.i2t)


def _grid(n_rows: int, n_columns: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """A float32 block on a coarse grid (many ties), each row's own column, and column thresholds."""
    rng = np.random.default_rng(seed)
    block = torch.from_numpy((rng.integers(0, 6, (n_rows, n_columns)) / 5).astype(np.float32))
    return (
        block,
        rng.integers(0, n_columns, n_rows),
        torch.from_numpy(rng.integers(0, 6, n_columns) / 5).float(),
    )


def test_the_compiled_loop_counts_blocks_from_its_size_limit_up():
    limit = block_counts.COMPILED_MIN_ENTRIES
    assert kernel_for(torch.zeros(1, limit)) == "compiled"
    assert kernel_for(torch.zeros(1, limit - 1)) == "slabs"
    assert kernel_for(torch.zeros(2, limit // 2, dtype=torch.float64)) == "compiled"
    assert kernel_for(torch.zeros(1, limit, dtype=torch.float16)) == "torch"
    assert kernel_for(torch.zeros(1, limit), n_column_thresholds=3) == "slabs"  # the loop has two slots


def test_without_numba_the_slabs_count_every_block(monkeypatch):
    compiled_counts.compiled_kernel.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
            assert compiled_counts.compiled_kernel() is None
            assert kernel_for(torch.zeros(1, block_counts.COMPILED_MIN_ENTRIES)) == "slabs"
            block, own, _ = _grid(4, 5)
            with pytest.raises(RuntimeError, match="needs numba"):
                count_block(block, None, [], own, kernel="compiled")
    finally:
        compiled_counts.compiled_kernel.cache_clear()
    assert compiled_counts.compiled_kernel() is not None


def test_a_block_at_the_size_limit_is_counted_by_the_compiled_loop_with_the_same_counts(monkeypatch):
    block, own, columns = _grid(64, block_counts.COMPILED_MIN_ENTRIES // 64, seed=3)
    rows = block[torch.arange(64), torch.from_numpy(own)]
    pair = [ColumnThreshold(columns, True), ColumnThreshold(columns, False)]
    used = []
    real = block_counts._count_compiled
    monkeypatch.setattr(block_counts, "_count_compiled", lambda *a: used.append(1) or real(*a))
    auto = count_block(block, rows, pair, own, between=(0, 1))
    assert used == [1]
    slabs = count_block(block, rows, pair, own, between=(0, 1), kernel="slabs")
    assert auto.rows.tolist() == slabs.rows.tolist()
    assert [c.tolist() for c in auto.columns] == [c.tolist() for c in slabs.columns]
    assert [o.tolist() for o in auto.own] == [o.tolist() for o in slabs.own]
    assert sorted(zip(*(x.tolist() for x in auto.between[:2]), strict=True)) == sorted(
        zip(*(x.tolist() for x in slabs.between[:2]), strict=True)
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_entry_is_named_by_its_row_and_column(kernel, bad):
    block, own, columns = _grid(70, 50)
    block[45, 7] = bad  # in the second slab of 32 rows
    block[60, 2] = float("nan")  # a later one is not the one named
    with pytest.raises(NonFiniteScoreError, match="at row 145, column 7"):
        count_block(block, None, [ColumnThreshold(columns, False)], own, row_offset=100, kernel=kernel)


@pytest.mark.parametrize("kernel", ["compiled", "slabs"])
def test_finite_entries_whose_row_sum_overflows_are_counted(kernel):
    block = torch.tensor([[3e38, 3e38, -1.0], [0.0, 1.0, 2.0]])  # row 0 sums to inf in float32
    found = count_block(block, torch.tensor([3e38, 1.0]), [ColumnThreshold(torch.tensor([0.0, 0.0, 0.0]), False)],
                        np.array([0, 1]), kernel=kernel)  # fmt: skip
    assert found.rows.tolist() == [2, 2] and found.columns[0].tolist() == [2, 2, 1]


def test_a_band_larger_than_the_room_kept_for_it_is_found_whole():
    n_rows, n_columns = 4, 3 * block_counts._BAND_ROOM_PER_ROW  # every entry is in the band: 3x the room
    block = torch.full((n_rows, n_columns), 0.5)
    high, low = torch.full((n_columns,), 0.75), torch.full((n_columns,), 0.5)
    found = count_block(
        block, None, [ColumnThreshold(high, True), ColumnThreshold(low, False)], np.zeros(n_rows, dtype=int),
        between=(0, 1), kernel="compiled",
    )  # fmt: skip
    rows, columns, values = found.between
    assert len(rows) == n_rows * n_columns
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == [
        (r, c) for r in range(n_rows) for c in range(n_columns)
    ]
    assert (values == 0.5).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_band_whose_edges_cross_is_still_found_exactly(kernel):
    """``between=(i, j)`` with threshold i below j in some columns (no entry can be in the band there,
    although the two counts move apart) and above it in others."""
    block, own, _ = _grid(40, 9, seed=5)
    first = torch.tensor([0.2, 0.8, 0.4, 0.6, 0.0, 1.0, 0.4, 0.4, 0.2])
    second = torch.tensor([0.6, 0.2, 0.4, 0.6, 0.8, 0.0, 0.2, 0.6, 0.2])
    found = count_block(
        block, None, [ColumnThreshold(first, False), ColumnThreshold(second, True)], own, between=(0, 1),
        kernel=kernel,
    )  # fmt: skip
    values = block.numpy()
    expected = np.argwhere((values > second.numpy()) & ~(values >= first.numpy()))
    assert sorted(zip(*(x.tolist() for x in found.between[:2]), strict=True)) == [tuple(e) for e in expected]
    assert found.columns[0].tolist() == (values >= first.numpy()).sum(0).tolist()
    assert found.columns[1].tolist() == (values > second.numpy()).sum(0).tolist()


def test_an_unknown_kernel_or_a_third_threshold_for_the_compiled_loop_is_refused():
    block, own, columns = _grid(3, 4)
    with pytest.raises(ValueError, match="kernel must be one of"):
        count_block(block, None, [], own, kernel="fast")
    three = [ColumnThreshold(columns, False)] * 3
    with pytest.raises(ValueError, match="at most two column thresholds"):
        count_block(block, None, three, own, kernel="compiled")
    assert [c.tolist() for c in count_block(block, None, three, own).columns] == [
        (block.numpy() >= columns.numpy()).sum(0).tolist()
    ] * 3


def test_ranks_of_tied_integer_embeddings_equal_a_whole_matrix_count():
    """Integer embeddings: every dot product is exact in float32, so the hint equals the right score and
    many wrong entries tie with it; blocks of 2,048 columns go through the compiled loop."""
    rng = np.random.default_rng(7)
    items = torch.from_numpy(rng.integers(-1, 2, (2048, 6)).astype(np.float32))
    texts = torch.from_numpy(rng.integers(-1, 2, (1100, 6)).astype(np.float32))
    text_to_item = rng.integers(0, 2048, 1100)
    assert kernel_for(torch.zeros(512, 2048)) == "compiled"
    ranks = rank_embeddings(texts, items, text_to_item, chunk=512)
    scores = (texts.double() @ items.double().T).numpy()
    right = scores[np.arange(1100), text_to_item]
    np.testing.assert_array_equal(ranks.t2i, (scores >= right[:, None]).sum(1) - 1)
    for item in range(0, 2048, 97):
        own = text_to_item == item
        if not own.any():
            assert ranks.i2t[item] == 1100
            continue
        best = scores[own, item].max()
        assert ranks.i2t[item] == (scores[~own, item] >= best).sum()


def test_dot_blocks_are_as_tall_as_fit_in_64_mb_from_512_to_4096_rows():
    assert dot_chunk(5000) == 2048  # 2,048 x 5,000 x 4 bytes = 41 MB; 4,096 rows would be 82 MB
    assert dot_chunk(1000) == 4096 and dot_chunk(0) == 4096
    assert dot_chunk(16384) == 1024  # 2 x 1,024 x 16,384 x 4 bytes is 2^27: the next doubling does not fit
    assert dot_chunk(16385) == 512  # 1,024 x 16,385 x 4 bytes is just over 64 MB
    assert dot_chunk(100_000) == 512  # never below the scorers' block
    assert dot_chunk(8192, itemsize=8) == 1024 and dot_chunk(8193, itemsize=8) == 512


def test_pairwise_dot_across_chunk_edges():
    gen = torch.Generator().manual_seed(1)
    queries, gallery = torch.randn(2500, 8, generator=gen), torch.randn(30, 8, generator=gen)
    owner = np.arange(2500) % 30
    expected = (queries.double() * gallery.double()[torch.from_numpy(owner)]).sum(1)
    # float32 sums of 8 products of standard normals: errors of a few 1e-7 against float64
    got = pairwise_dot(queries, gallery, owner, chunk=1024).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert pairwise_dot(queries[:0], gallery, owner[:0]).shape == (0,)


def test_without_a_writable_cache_the_loop_is_compiled_in_the_process(monkeypatch):
    import numba

    calls, real_njit = [], numba.njit

    def njit(**options):
        calls.append(options["cache"])
        if options["cache"]:
            raise RuntimeError("cannot cache function: no locator available")
        return real_njit(**options)

    compiled_counts.compiled_kernel.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(numba, "njit", njit)
            run = compiled_counts.compiled_kernel()
    finally:
        compiled_counts.compiled_kernel.cache_clear()
    assert calls == [True, False] and run is not None
    block, own, columns = _grid(40, 6)
    counts = [np.zeros(6, np.int32), np.zeros(6, np.int32)]
    values, at_least = block.numpy(), columns.numpy()
    n_band, first_bad = run(
        values, np.full(40, np.inf, np.float32), at_least, at_least, own, False,
        np.empty(40, np.int32), *counts, np.empty(40, bool), np.empty(40, bool),
        np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
    )  # fmt: skip
    assert (n_band, first_bad) == (0, -1)
    assert counts[0].tolist() == (values >= at_least).sum(0).tolist() == counts[1].tolist()
