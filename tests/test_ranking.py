"""Chunked ranking and metrics against hand-computed cases and an argsort formulation."""

import numpy as np
import pytest
import torch

from vlret.evaluate.metrics import retrieval_metrics
from vlret.evaluate.ranking import matrix_block_fn, rank_embeddings, rank_matrix, topk_blocks

# 3 items; texts 0,1 -> item 0, text 2 -> item 1, texts 3,4 -> item 2 (worked by hand in the comments).
S = np.array(
    [
        [0.9, 0.5, 0.1],  # correct 0.9, nothing wrong above            -> rank 0
        [0.2, 0.6, 0.4],  # correct 0.2, 0.6 and 0.4 above              -> rank 2
        [0.3, 0.3, 0.8],  # correct 0.3, a tie at 0.3 counts, 0.8 above -> rank 2
        [0.1, 0.7, 0.75],  # correct 0.75                               -> rank 0
        [0.5, 0.4, 0.45],  # correct 0.45, 0.5 above                    -> rank 1
    ],
    dtype=np.float32,
)
TEXT_TO_ITEM = np.array([0, 0, 1, 2, 2])
# image->text: item 0 best own 0.9, no wrong text >= 0.9 -> 0; item 1 own 0.3, wrong 0.5 0.6 0.7 0.4 -> 4;
# item 2 best own 0.75 (text 3), wrong text 2 has 0.8 -> 1.


@pytest.mark.parametrize("chunk", [1, 2, 5, 100])
def test_ranks_by_hand(chunk):
    ranks = rank_matrix(S, TEXT_TO_ITEM, chunk=chunk)
    assert ranks.t2i.tolist() == [0, 2, 2, 0, 1]
    assert ranks.i2t.tolist() == [0, 4, 1]


def test_metrics_by_hand():
    m = retrieval_metrics(np.array([0, 2, 2, 0, 1]), np.array([0, 4, 1]))
    assert m["t2i_r1"] == pytest.approx(0.4) and m["t2i_r5"] == 1.0 and m["t2i_r10"] == 1.0
    assert m["t2i_medr"] == 2.0  # median of [0,0,1,2,2] is 1 -> floor(1)+1
    assert m["t2i_meanr"] == pytest.approx(2.0)  # mean 1 + 1
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["i2t_r5"] == 1.0
    assert m["i2t_medr"] == 2.0 and m["i2t_meanr"] == pytest.approx(5 / 3 + 1)
    assert m["rsum"] == pytest.approx(0.4 + 1 + 1 + 1 / 3 + 1 + 1)
    only = retrieval_metrics(np.array([0, 3]), None)
    assert (
        "i2t_r1" not in only and only["t2i_r1"] == 0.5 and only["t2i_medr"] == 2.0
    )  # median 1.5 -> floor 1 + 1


def test_even_count_median_floors():
    assert retrieval_metrics(np.array([0, 1, 4, 9]), None)["t2i_medr"] == 3.0  # median 2.5 -> 2 + 1


def test_constant_scores_are_never_hits():
    ranks = rank_matrix(np.zeros((5, 3), np.float32), TEXT_TO_ITEM)
    assert ranks.t2i.tolist() == [2] * 5  # every other item ties
    assert ranks.i2t.tolist() == [3, 4, 3]  # every other text ties


def test_item_without_captions_is_a_miss():
    ranks = rank_matrix(S[:3, :], np.array([0, 0, 1]))  # item 2 has no texts here
    assert ranks.i2t[2] == 3


def _argsort_ranks(scores, text_to_item):
    """The classic VSE evaluation loop: position of the answer in the descending argsort."""
    t2i = [
        int(np.where(np.argsort(-row, kind="stable") == text_to_item[t])[0][0])
        for t, row in enumerate(scores)
    ]
    i2t = []
    for i in range(scores.shape[1]):
        order = np.argsort(-scores[:, i], kind="stable")
        own = np.where(text_to_item == i)[0]
        i2t.append(int(min(np.where(order == t)[0][0] for t in own)))
    return np.array(t2i), np.array(i2t)


def test_embeddings_path_equals_argsort_formulation():
    gen = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    text_to_item = np.repeat(np.arange(40), 5)
    texts = torch.nn.functional.normalize(
        items[text_to_item] + 0.9 * torch.randn(200, 16, generator=gen), dim=1
    )
    ranks = rank_embeddings(texts, items, text_to_item, chunk=33)
    t2i, i2t = _argsort_ranks((texts @ items.T).numpy(), text_to_item)
    np.testing.assert_array_equal(ranks.t2i, t2i)
    np.testing.assert_array_equal(ranks.i2t, i2t)
    assert 0 < (ranks.t2i == 0).mean() < 1  # the case is neither trivial nor hopeless


def test_topk_by_hand():
    values, indices = topk_blocks(matrix_block_fn(S), len(S), k=2, chunk=2)
    assert indices.tolist() == [[0, 1], [1, 2], [2, 0], [2, 1], [0, 2]]
    np.testing.assert_allclose(values[1], [0.6, 0.4])


def test_any_block_scorer_plugs_in():
    """A scorer that is not a dot product (negative squared distance) ranks like a brute-force loop."""
    from vlret.evaluate.ranking import rank_blocks

    gen = torch.Generator().manual_seed(3)
    items, texts = torch.randn(12, 4, generator=gen), torch.randn(30, 4, generator=gen)
    text_to_item = np.arange(30) % 12

    def neg_distance(start, stop):
        return -(torch.cdist(texts[start:stop], items) ** 2)

    positive = -((texts - items[torch.from_numpy(text_to_item)]) ** 2).sum(1)
    ranks = rank_blocks(neg_distance, text_to_item, positive, len(items), chunk=7, tie_tolerance=1e-4)
    full = neg_distance(0, 30).numpy()
    t2i, i2t = _argsort_ranks(full, text_to_item)
    np.testing.assert_array_equal(ranks.t2i, t2i)
    np.testing.assert_array_equal(ranks.i2t, i2t)
