"""TextRefiner's cache and aggregation: the spec's worked example and properties (section 9, items 1-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlret.models.textrefiner import Aggregation, LocalCache


def _cache(entries):
    cache = LocalCache(size=len(entries), dim=len(entries[0]))
    cache.entries.copy_(torch.tensor(entries))
    return cache


def test_cache_write_worked_example():
    cache = _cache([[1.0, 0.0], [0.0, 1.0]])
    cache.write(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    torch.testing.assert_close(cache.entries[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(cache.entries[1], torch.tensor([0.086542, 0.996248]), atol=1e-6, rtol=0)


def test_cache_read_worked_example():
    cache = _cache([[1.0, 0.0], [0.086542, 0.996248]])
    attention, described = cache.read(torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(attention, torch.tensor([[0.71371, 0.28629]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(described, torch.tensor([[0.73848, 0.28522]]), atol=1e-5, rtol=0)


def test_write_weights_unit_rows_and_untouched_entries():
    torch.manual_seed(0)
    cache = LocalCache(size=6, dim=4)
    before = cache.entries.clone()
    tokens = F.normalize(torch.randn(10, 4), dim=1)
    sims = tokens @ before.T
    chosen = sims.argmax(1)
    # an independent formulation: the released code's softmax over tokens, divided by its column max
    p_tok = torch.softmax(sims, dim=0)
    weights = p_tok / p_tok.max(dim=0, keepdim=True).values
    expected = before.clone()
    for j in range(6):
        members = chosen == j
        if members.any():
            total = (weights[members, j][:, None] * tokens[members]).sum(0)
            expected[j] = F.normalize(0.8 * before[j] + 0.2 * total, dim=0)
    cache.write(tokens)
    torch.testing.assert_close(cache.entries, expected, atol=1e-6, rtol=0)
    assert torch.allclose(cache.entries.norm(dim=1), torch.ones(6))
    untouched = torch.ones(6, dtype=torch.bool)
    untouched[chosen] = False
    assert torch.equal(cache.entries[untouched], before[untouched])


def test_alpha_zero_is_coop_and_the_cache_takes_no_gradient():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    cache = LocalCache(size=5, dim=4)
    refined = Aggregation(dim=4, alpha=0.0)(text, cache.read(text)[1])
    assert torch.equal(refined, text)
    refined = Aggregation(dim=4, alpha=0.2)(text, cache.read(text)[1])
    refined.sum().backward()
    assert text.grad is not None and not cache.entries.requires_grad
    assert "entries" in cache.state_dict()  # saved and restored with the model


def test_semantic_tokens_order_and_loss_labels():
    from vlret.losses.textrefiner import semantic_loss, semantic_tokens

    aligned = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)  # [CLS] + 7 patches
    attention = torch.tensor([[0.1, 0.7, 0.0, 0.3, 0.2, 0.05, 0.9], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    u = semantic_tokens(aligned, attention)
    assert u.shape == (14, 3)
    torch.testing.assert_close(u[0], aligned[0, 0])
    # patches by attention: 7 (0.9), 2 (0.7), 4 (0.3), 5 (0.2), 1 (0.1); token index = patch index + 1
    for row, token in zip(range(1, 6), [7, 2, 4, 5, 1], strict=True):
        torch.testing.assert_close(u[row], aligned[0, token])
    torch.testing.assert_close(u[6], aligned[0].mean(0))
    torch.testing.assert_close(u[7], aligned[1, 0])
    classes = F.normalize(torch.randn(4, 3), dim=1)
    labels = torch.tensor([2, 0])
    expected = F.cross_entropy(10 * u @ classes.T, torch.tensor([2] * 7 + [0] * 7))
    torch.testing.assert_close(semantic_loss(u, classes, labels, 10.0), expected)


def test_the_regulariser_vanishes_for_unit_unchanged_embeddings():
    from vlret.losses.textrefiner import refinement_regulariser

    text = F.normalize(torch.randn(3, 4), dim=1)
    assert float(refinement_regulariser(2.5 * text, text)) < 1e-7  # scale does not count
    assert float(refinement_regulariser(text + 0.1, text)) > 0
