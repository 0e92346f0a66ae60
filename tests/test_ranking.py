"""Chunked ranking and metrics against hand-computed cases and an argsort formulation; the tie rule,
non-finite scores and stable top-k."""

import numpy as np
import pytest
import torch

import vlret.evaluate.ranking as ranking
from vlret.errors import NonFiniteScoreError
from vlret.evaluate.metrics import retrieval_metrics
from vlret.evaluate.ranking import (
    matrix_block_fn,
    rank_blocks,
    rank_embeddings,
    rank_matrix,
    stable_topk,
    topk_blocks,
)

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
    gen = torch.Generator().manual_seed(3)
    items, texts = torch.randn(12, 4, generator=gen), torch.randn(30, 4, generator=gen)
    text_to_item = np.arange(30) % 12

    def neg_distance(start, stop):
        return -(torch.cdist(texts[start:stop], items) ** 2)

    positive = -((texts - items[torch.from_numpy(text_to_item)]) ** 2).sum(1)
    full = neg_distance(0, 30).numpy()
    t2i, i2t = _argsort_ranks(full, text_to_item)
    for hint in (positive, None):  # with an estimate of the correct scores, and without (two passes)
        ranks = rank_blocks(neg_distance, text_to_item, len(items), chunk=7, positive_hint=hint)
        np.testing.assert_array_equal(ranks.t2i, t2i)
        np.testing.assert_array_equal(ranks.i2t, i2t)


# ----- the tie rule: exact comparison of one pass's values, ties against the model -------------------


def test_a_wrong_score_one_ulp_below_never_counts_and_an_exact_tie_does():
    c = np.float32(0.7)
    below = np.nextafter(c, np.float32(-1))
    # text 0 -> item 0: item 1 ties exactly, item 2 is one ulp below; text 1 -> item 1: item 0 is one ulp below
    scores = np.array([[c, c, below], [below, c, 0.0]], dtype=np.float32)
    ranks = rank_matrix(scores, np.array([0, 1]))
    assert ranks.t2i.tolist() == [1, 0]
    # item 0: best own 0.7 (text 0), wrong text 1 one ulp below -> 0; item 1: own 0.7, text 0 ties -> 1
    assert ranks.i2t.tolist() == [0, 1, 2]


def test_float64_scores_are_ranked_in_float64():
    scores = np.array([[0.5, 0.5 - 1e-9], [0.5 - 1e-9, 0.5]])  # float32 would make both rows ties
    ranks = rank_matrix(scores, np.array([0, 1]))
    assert ranks.t2i.tolist() == [0, 0] and ranks.i2t.tolist() == [0, 0]
    as_float32 = rank_matrix(scores.astype(np.float32), np.array([0, 1]))
    assert as_float32.t2i.tolist() == [1, 1]


def _brute_force(scores, text_to_item):
    """Ranks by the rule, counted entry by entry in float64 (an independent formulation)."""
    scores = np.asarray(scores, dtype=np.float64)
    t2i = [
        sum(
            scores[t, j] >= scores[t, text_to_item[t]] for j in range(scores.shape[1]) if j != text_to_item[t]
        )
        for t in range(len(scores))
    ]
    i2t = []
    for i in range(scores.shape[1]):
        own = np.flatnonzero(text_to_item == i)
        if len(own) == 0:
            i2t.append(len(scores))
            continue
        best = scores[own, i].max()
        i2t.append(sum(scores[t, i] >= best for t in range(len(scores)) if text_to_item[t] != i))
    return np.array(t2i), np.array(i2t)


def _tied_case():
    """Scores on a coarse grid (many exact ties), float32."""
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, size=(40, 9)).astype(np.float32) / 8
    text_to_item = np.arange(40) % 9
    scores[np.arange(40), text_to_item] += 2 / 8  # some signal, so that some ranks are 0
    return scores, text_to_item


@pytest.mark.parametrize("ulps", [0, 3, -3, 10_000])
def test_image_to_text_is_exact_whatever_the_estimate_of_the_correct_scores(ulps):
    """The estimate (pairwise dot products in real use) may differ from the block values in the last bits
    (3 ulps) or by far more (10,000 ulps: the second pass); the ranks come from the block values only."""
    scores, text_to_item = _tied_case()
    exact = scores[np.arange(40), text_to_item]
    hint = torch.from_numpy(exact + ulps * np.spacing(exact))
    ranks = rank_blocks(matrix_block_fn(scores), text_to_item, 9, chunk=6, positive_hint=hint)
    t2i, i2t = _brute_force(scores, text_to_item)
    np.testing.assert_array_equal(ranks.t2i, t2i)
    np.testing.assert_array_equal(ranks.i2t, i2t)
    assert (ranks.i2t > 0).any() and (ranks.i2t == 0).any()


def test_a_degenerate_scorer_falls_back_to_the_second_pass(monkeypatch):
    monkeypatch.setattr(ranking, "_MAX_BAND_ENTRIES", 5)  # the band overflows: counted in a second pass
    scores, text_to_item = _tied_case()
    calls = []

    def block_fn(start, stop):
        calls.append(start)
        return torch.from_numpy(scores[start:stop])

    ranks = rank_blocks(
        block_fn,
        text_to_item,
        9,
        chunk=10,
        positive_hint=torch.from_numpy(scores[np.arange(40), text_to_item]),
    )
    np.testing.assert_array_equal(ranks.i2t, _brute_force(scores, text_to_item)[1])
    assert calls == [0, 10, 20, 30] * 2


def test_one_rule_through_every_path(synth_data):
    """Embeddings whose dot products are exact in float32 (four 0.5 entries each: score = overlap / 4) give
    the same ranks through the matrix, embedding, score-file and VISA paths, equal to a brute-force count."""
    from vlret.data import load_dataset
    from vlret.evaluate.api import evaluate_embeddings, evaluate_scores
    from vlret.evaluate.protocols import PROTOCOLS, prepare
    from vlret.rerank.visa.run import base_from_embeddings, base_from_scores

    split = load_dataset(synth_data).split("test")
    rng = np.random.default_rng(1)

    def sparse_unit(n):
        out = np.zeros((n, 8), np.float32)
        for row in out:
            row[rng.choice(8, 4, replace=False)] = 0.5
        return out

    items, texts = sparse_unit(len(split.items)), sparse_unit(len(split.captions))
    scores = texts @ items.T
    t2i, i2t = _brute_force(scores, split.caption_to_item)
    assert (t2i > 0).any() and (t2i == 0).any()

    for ranks in (
        rank_matrix(scores, split.caption_to_item),
        rank_matrix(scores.astype(np.float64), split.caption_to_item),
        rank_embeddings(torch.from_numpy(texts), torch.from_numpy(items), split.caption_to_item, chunk=7),
        evaluate_embeddings(items, texts, *[prepare(split, PROTOCOLS["generic"])[i] for i in (0, 2)])[0],
    ):
        np.testing.assert_array_equal(ranks.t2i, t2i)
        np.testing.assert_array_equal(ranks.i2t, i2t)
    expected = retrieval_metrics(t2i, i2t)
    for matrix in (scores, scores.astype(np.float64)):
        assert evaluate_scores(matrix, split)["metrics"] == pytest.approx(expected)
    np.testing.assert_array_equal(base_from_scores(scores, split, 3)[2], t2i)
    np.testing.assert_array_equal(base_from_embeddings(texts, items, split, 3)[2], t2i)


# ----- non-finite scores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_where_they_are(value):
    scores = S.copy()
    scores[3, 1] = value
    with pytest.raises(NonFiniteScoreError, match="row 3, column 1") as info:
        rank_matrix(scores, TEXT_TO_ITEM, chunk=2)
    assert info.value.row == 3 and info.value.column == 1
    with pytest.raises(NonFiniteScoreError):
        topk_blocks(matrix_block_fn(scores), len(scores), k=2)


def test_an_all_nan_matrix_is_refused_not_scored_perfect():
    with pytest.raises(NonFiniteScoreError, match="row 0, column 0"):
        rank_matrix(np.full((5, 3), np.nan, np.float32), TEXT_TO_ITEM)


def test_large_finite_scores_that_overflow_a_sum_are_accepted():
    scores = np.full((5, 3), 3e38, np.float32)
    scores[np.arange(5), TEXT_TO_ITEM] = 3.4e38
    assert rank_matrix(scores, TEXT_TO_ITEM).t2i.tolist() == [0] * 5


# ----- stable top-k ---------------------------------------------------------------------------------------


def test_topk_ties_go_to_the_lower_index_also_at_the_kth_place():
    row = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1, 0.9]])
    assert stable_topk(row, 1)[1].tolist() == [[1]]
    assert stable_topk(row, 3)[1].tolist() == [[1, 5, 0]]
    assert stable_topk(row, 4)[1].tolist() == [[1, 5, 0, 2]]
    assert stable_topk(row, 9)[1].tolist() == [[1, 5, 0, 2, 3, 4]]


def test_topk_equals_a_stable_argsort_on_heavily_tied_rows():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(50, 300)).astype(np.float32)
    values, indices = topk_blocks(matrix_block_fn(scores), 50, k=20, chunk=16)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))


@pytest.mark.parametrize("item_rule", ["captions", "items"])
@pytest.mark.parametrize("chunk", [1, 512])
def test_an_item_without_texts_ranks_last_under_both_item_rules(item_rule, chunk):
    """Texts of items [0, 0, 1]; item 2 has none. Worked by hand: text->item ranks [1, 1, 0]; item 0's
    best own text scores .5 and only text 2 (owner item 1, .9) is above it; item 1's .95 is beaten by
    nothing; item 2 gets n_texts = 3 (never a hit). Under the items rule owner rows are [.5, .2, .9] and
    [.9, .95, .3]: the same ranks here."""
    scores = torch.tensor([[0.5, 0.1, 0.9], [0.4, 0.2, 0.8], [0.9, 0.95, 0.3]])
    ranks = rank_blocks(lambda a, b: scores[a:b], np.array([0, 0, 1]), 3, chunk=chunk, item_rule=item_rule)
    np.testing.assert_array_equal(ranks.t2i, [1, 1, 0])
    np.testing.assert_array_equal(ranks.i2t, [1, 0, 3])
