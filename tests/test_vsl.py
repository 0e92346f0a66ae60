"""VSL (vsl_sgraf spec section 9, properties 6-9): the hinge's 3x3 values, soft ranks, VSL's worked values and
landmarks, its gradient, and the TF-IDF targets against a hand-written TF-IDF."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from vlret.losses import HingeLoss, VisualSemanticLoss, soft_rank
from vlret.losses.caption_targets import CaptionSemanticTargets
from vlret.losses.vsl import TextualSemanticLoss, rank_agreement_loss

M = torch.tensor([[0.9, 0.5, 0.3], [0.6, 0.8, 0.7], [0.2, 0.85, 0.4]], dtype=torch.float64)
C = torch.tensor([[1, 0.2, 0.1], [0.2, 1, 0.5], [0.1, 0.5, 1]], dtype=torch.float64)


def _hinge(loss: HingeLoss, scores: torch.Tensor) -> float:
    return loss({"scores": scores, "item_ids": torch.arange(len(scores))}, {})["hinge"].item()


def test_hinge_spec_example():
    assert _hinge(HingeLoss(), M) == pytest.approx(1.5)  # rows .1 + .65, columns .25 + .5
    assert _hinge(HingeLoss(max_violation=False), M) == pytest.approx(1.6)
    assert _hinge(HingeLoss(), torch.eye(3, dtype=torch.float64)) == 0
    assert _hinge(HingeLoss(), torch.full((3, 3), 0.3, dtype=torch.float64)) == pytest.approx(2 * 3 * 0.2)


def test_soft_rank_spec_examples():
    ties = torch.tensor([[1, 1, 0.1], [1, 1, 0.1], [0.1, 0.1, 1]], dtype=torch.float64)
    expected_ties = [[1.5, 1.5, 3], [1.5, 1.5, 3], [2.5, 2.5, 1]]
    for mode in ("reference", "row"):  # a symmetric matrix: both forms agree
        assert np.allclose(soft_rank(ties, mode=mode), expected_ties)
    assert np.allclose(soft_rank(M, mode="reference"), [[1, 2, 3], [3, 2, 2], [3, 1, 2]])
    assert np.allclose(soft_rank(M, mode="row"), [[1, 2, 3], [3, 1, 2], [3, 1, 2]])


def test_soft_rank_is_a_permutation_for_separated_symmetric_matrices():
    rng = np.random.default_rng(0)
    values = rng.permutation(36)[:36] * 0.1  # distinct, gaps >= 0.1
    a = np.zeros((8, 8))
    a[np.triu_indices(8)] = values
    a = a + np.triu(a, 1).T
    np.fill_diagonal(a, 10.0)  # the diagonal is each row's largest
    ranks = soft_rank(torch.from_numpy(a))
    for row in ranks:
        assert sorted(row.tolist()) == pytest.approx(list(range(1, 9)))
    assert ranks.diagonal().tolist() == pytest.approx([1.0] * 8)


def test_soft_rank_chunks_agree():
    scores = torch.rand(10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = soft_rank(scores, temperature=0.05)
    for chunk in (1, 3, 10):
        assert torch.allclose(soft_rank(scores, temperature=0.05, chunk=chunk), whole)


def test_vsl_worked_values():
    assert VisualSemanticLoss().compare(M, C).item() == pytest.approx(10 * (1 - 7.5 / 9), abs=1e-9)
    assert VisualSemanticLoss(rank_mode="row").compare(M, C).item() == pytest.approx(
        10 * (1 - 8 / 9), abs=1e-9
    )
    assert VisualSemanticLoss().compare(C, C).item() == pytest.approx(0, abs=1e-12)
    # rankings that match give 0; any strictly increasing rescaling of either side changes nothing
    assert VisualSemanticLoss().compare(C * 3 + 1, C).item() == pytest.approx(0, abs=1e-12)
    assert VisualSemanticLoss().compare(torch.exp(M * 5), C).item() == pytest.approx(
        VisualSemanticLoss().compare(M * 5, C).item(), abs=1e-9
    )


def _hard_ranks_loss(scores: np.ndarray, target: np.ndarray) -> float:
    """Plain numpy: rank each row (1 = largest) and average min/max."""
    ranks_s = (-scores).argsort(1).argsort(1) + 1
    ranks_t = (-target).argsort(1).argsort(1) + 1
    return 10 * (1 - (np.minimum(ranks_s, ranks_t) / np.maximum(ranks_s, ranks_t)).mean())


def test_vsl_landmarks_random_and_reversed():
    size = 128
    rng = np.random.default_rng(3)
    scores = np.stack([rng.permutation(size) for _ in range(size)]).astype(np.float64)  # gaps >= 1
    target = np.stack([rng.permutation(size) for _ in range(size)]).astype(np.float64)
    loss = VisualSemanticLoss(rank_mode="row")
    random_value = loss.compare(torch.from_numpy(scores), torch.from_numpy(target)).item()
    assert random_value == pytest.approx(_hard_ranks_loss(scores, target), abs=1e-9)
    assert random_value == pytest.approx(5.0, abs=0.2)
    reversed_value = loss.compare(torch.from_numpy(scores), torch.from_numpy(-scores)).item()
    exact = 10 * (1 - sum(min(r, size + 1 - r) / max(r, size + 1 - r) for r in range(1, size + 1)) / size)
    assert reversed_value == pytest.approx(exact, abs=1e-9)
    assert exact == pytest.approx(6.11, abs=0.01) and 10 * (2 - 2 * math.log(2)) == pytest.approx(
        6.137, abs=1e-3
    )


def test_vsl_gradient_reaches_close_pairs_only_and_never_the_target():
    # row 0: 0.9 vs 0.898 lie inside the sigmoid's unclamped band (|gap| < 50 * 0.001); every other gap is > 0.05
    scores = torch.tensor(
        [[0.9, 0.898, 0.1], [0.5, 0.9, 0.2], [0.1, 0.3, 0.9]], dtype=torch.float64, requires_grad=True
    )
    target = torch.tensor(
        [[1.0, 0.1, 0.5], [0.1, 1.0, 0.2], [0.5, 0.2, 1.0]], dtype=torch.float64, requires_grad=True
    )
    loss = VisualSemanticLoss(rank_mode="row").compare(scores, target)
    loss.backward()
    assert target.grad is None or not target.grad.any()
    grad = scores.grad
    assert grad[0, 0] != 0 and grad[0, 1] != 0
    far = [(0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (1, 1), (2, 2)]
    assert all(grad[i, j] == 0 for i, j in far)


def test_rank_agreement_loss_bounds():
    ranks = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    assert rank_agreement_loss(ranks, ranks).item() == 0
    assert rank_agreement_loss(ranks, ranks.flip(1)).item() == pytest.approx(0.5)


# ----- the TF-IDF targets -----------------------------------------------------------------------------------

CAPTIONS = [
    "a red circle on the left",
    "the red circle",
    "a blue square and a red circle",
    "blue square at the top",
    "two green triangles",
    "green triangles below a blue square",
]
CAPTION_ITEM = np.array([0, 0, 1, 1, 2, 2])


def _manual_tfidf(captions: list[str]) -> np.ndarray:
    """TF-IDF as sklearn documents its defaults: >= 2-letter word tokens, smooth idf, raw tf, L2 rows."""
    docs = [re.findall(r"\b\w\w+\b", c.lower()) for c in captions]
    vocab = sorted({w for d in docs for w in d})
    n = len(docs)
    df = Counter(w for d in docs for w in set(d))
    idf = {w: math.log((1 + n) / (1 + df[w])) + 1 for w in vocab}
    rows = np.array([[Counter(d)[w] * idf[w] for w in vocab] for d in docs])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_targets_equal_a_hand_written_tfidf():
    targets = CaptionSemanticTargets(CAPTIONS, CAPTION_ITEM)
    u = _manual_tfidf(CAPTIONS)
    ids = torch.tensor([0, 3, 5, 1])
    assert np.allclose(targets.textual(ids).numpy(), u[[0, 3, 5, 1]] @ u[[0, 3, 5, 1]].T, atol=1e-6)
    # the 2 x 2 average-pooled Gram matrix of the images' captions
    gram = u @ u.T
    pooled = gram.reshape(3, 2, 3, 2).mean(axis=(1, 3))
    item_ids = torch.tensor([2, 0, 1, 0])
    visual = targets.visual(item_ids).numpy()
    assert np.allclose(visual, pooled[np.ix_([2, 0, 1, 0], [2, 0, 1, 0])], atol=1e-6)
    assert np.allclose(visual, visual.T) and (visual >= -1e-7).all() and (visual <= 1 + 1e-6).all()
    assert np.array_equal(visual[1], visual[3])  # the same image twice: identical rows


def test_vsl_term_reads_the_batch_items_and_captions():
    targets = CaptionSemanticTargets(CAPTIONS, CAPTION_ITEM)
    scores = torch.tensor([[0.9, 0.3, 0.1], [0.2, 0.8, 0.4], [0.1, 0.5, 0.7]])
    outputs = {"scores": scores, "item_ids": torch.tensor([0, 1, 2]), "caption_ids": torch.tensor([1, 2, 4])}
    vsl, tsl = VisualSemanticLoss(), TextualSemanticLoss()
    vsl.targets = tsl.targets = targets
    assert vsl(outputs, {})["vsl"].item() == pytest.approx(
        vsl.compare(scores, targets.visual(outputs["item_ids"])).item()
    )
    assert tsl(outputs, {})["tsl"].item() == pytest.approx(
        tsl.compare(scores, targets.textual(outputs["caption_ids"])).item()
    )
    with pytest.raises(RuntimeError, match="fit"):
        VisualSemanticLoss()(outputs, {})


def test_vsl_rejects_bad_options():
    for bad in ({"rank_mode": "col"}, {"target": "both"}, {"temperature": 0}, {"chunk": 0}):
        with pytest.raises(ValueError):
            VisualSemanticLoss(**bad)
