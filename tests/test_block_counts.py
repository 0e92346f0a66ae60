"""One pass over a score block (issue 38, P1): counts against row and column thresholds, slab by slab,
equal to plain whole-block comparisons; and the reused score buffer of the dot-product blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlret.evaluate import block_counts
from vlret.evaluate.block_counts import ColumnThreshold, count_block
from vlret.evaluate.ranking import dot_block_fn, rank_blocks, rank_embeddings


def test_a_hand_worked_block():
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
    )
    rows, columns, values = band.between
    assert rows.tolist() == [0, 1, 2] and columns.tolist() == [0, 2, 1]
    np.testing.assert_allclose(values, [0.5, 0.3, 0.2])


def _plain(block: np.ndarray, rows: np.ndarray, columns: np.ndarray, own: np.ndarray):
    """The same counts by whole-block comparisons, entry by entry in numpy."""
    at_or_above = block >= rows[:, None]
    strict, loose = block > columns[None, :], block >= columns[None, :]
    picked = (np.arange(len(block)), own)
    return at_or_above.sum(1), strict.sum(0), loose.sum(0), strict[picked], loose[picked]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("n_rows", [1, block_counts.SLAB_ROWS, 3 * block_counts.SLAB_ROWS + 5])
def test_counts_equal_whole_block_comparisons_with_ties(dtype, n_rows):
    rng = np.random.default_rng(n_rows)
    block = torch.from_numpy(rng.integers(0, 6, (n_rows, 37)) / 5).to(dtype)  # a coarse grid: many ties
    own = rng.integers(0, 37, n_rows)
    rows = block[torch.arange(n_rows), torch.from_numpy(own)]
    columns = torch.from_numpy(rng.integers(0, 6, 37) / 5).to(dtype)
    found = count_block(
        block, rows, [ColumnThreshold(columns, True), ColumnThreshold(columns, False)], own, between=(0, 1)
    )
    without_rows = count_block(block, None, [ColumnThreshold(columns, False)], own)
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
