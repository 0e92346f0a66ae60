"""VISA's testable properties that need no model: top-K, normalisation, fusion, final ranks, parsing, passages."""

import numpy as np
import pytest

from vlret.rerank.visa.fusion import compat_ranks, fuse, minmax_rows, rerank_topk, top_k
from vlret.rerank.visa.prompts import assemble_passage, parse_questions
from vlret.rerank.visa.run import final_ranks

rng = np.random.default_rng(0)


def test_top_k_is_the_k_highest_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.3]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2]]  # a tie goes to the lower index


def test_minmax_by_hand_and_constant_rows():
    out = minmax_rows(np.array([[2.0, 4.0, 3.0], [5.0, 5.0, 5.0]]))
    assert out.tolist() == [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]


def test_minmax_invariant_to_positive_affine_maps():
    x = rng.normal(size=(4, 20))
    np.testing.assert_allclose(minmax_rows(3.5 * x - 7.0), minmax_rows(x), atol=1e-12)
    y = minmax_rows(x)
    assert np.allclose(y.min(axis=1), 0) and np.allclose(y.max(axis=1), 1)


def test_fusion_by_hand():
    base = np.array([[0.9, 0.7, 0.5]])  # -> [1, .5, 0]
    text = np.array([[1.0, 3.0, 2.0]])  # -> [0, 1, .5]
    assert fuse(base, text).tolist() == [[1.0, 1.5, 0.5]]
    candidates = np.array([[7, 3, 5]])
    assert rerank_topk(candidates, base, fuse(base, text)).tolist() == [[3, 7, 5]]
    # ties in the fused score go to the higher base score
    assert rerank_topk(candidates, base, np.array([[1.0, 1.0, 1.0]])).tolist() == [[7, 3, 5]]


def test_zero_text_weight_gives_back_the_base_ranking():
    base = -np.sort(-rng.normal(size=(30, 20)), axis=1)  # candidates come best first
    candidates = np.tile(np.arange(20), (30, 1))
    fused = fuse(base, rng.normal(size=(30, 20)), w_base=1.0, w_text=0.0)
    assert np.array_equal(rerank_topk(candidates, base, fused), candidates)


def test_zero_base_weight_orders_by_text_alone():
    base = -np.sort(-rng.normal(size=(5, 8)), axis=1)
    text = rng.normal(size=(5, 8))
    candidates = np.tile(np.arange(8), (5, 1))
    reranked = rerank_topk(candidates, base, fuse(base, text, w_base=0.0, w_text=1.0))
    assert np.array_equal(reranked, np.argsort(-text, axis=1))


def test_only_the_top_k_moves():
    reranked = np.array([[4, 2, 9], [1, 0, 3]])
    base_ranks = np.array([7, 1])  # query 0: the answer (item 5) was at base rank 7, outside the top 3
    answers = np.array([5, 3])
    assert final_ranks(reranked, base_ranks, answers).tolist() == [7, 2]


def test_compat_ranks_use_a_dense_row():
    base = np.array([[0.9, 0.8, 0.1, 0.0]])
    candidates = np.array([[0, 1]])
    fused = np.array([[0.5, 2.0]])
    assert compat_ranks(base, candidates, fused, np.array([1])).tolist() == [0]
    assert compat_ranks(base, candidates, fused, np.array([0])).tolist() == [1]


WELL_FORMED = """key phrases:
1. red circle
2. left
questions:
1. What colour is the circle? It is
2. Where is the circle
located? 3. Is there a square?
"""


def test_parse_well_formed_reply():
    parsed = parse_questions(WELL_FORMED, "a red circle on the left")
    assert parsed.status == "ok"
    assert parsed.questions == [
        "What colour is the circle?",
        "Where is the circle located?",
        "Is there a square?",
    ]
    assert parsed.key_phrases == "1. red circle 2. left"


@pytest.mark.parametrize(
    "reply, status",
    [
        ("I cannot help with that.", "fallback"),
        ("key phrases: 1. 红色 questions: 1. Is it red?", "fallback"),
        ("questions: 1. Is it red?", "partial"),
    ],
)
def test_parse_fallbacks_never_raise(reply, status):
    parsed = parse_questions(reply, "a red circle", n=3)
    assert parsed.status == status and len(parsed.questions) == 3
    assert all(q.endswith("?") for q in parsed.questions)
    if status == "fallback":
        assert parsed.key_phrases == "a red circle"
    assert parsed.raw == reply


def test_passage_assembly_default_and_compat():
    answers = ["Yes, a red circle.", "Uncertain", "It is on the left."]
    assert (
        assemble_passage(answers, "A grey picture.", usable=True)
        == "Yes, a red circle. It is on the left. A grey picture."
    )
    assert assemble_passage(answers, "A grey picture.", usable=False) == "A grey picture."
    compat = assemble_passage(answers, "A grey picture.", usable=True, compat=True)
    assert compat == "Yes, a red circle.It is on the left.A grey picture."
    assert assemble_passage(["uncertain."], "D", usable=True) == "D"  # whole-answer match, any case
