"""CoOp's prompt learner on vlret's tiny dual encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlret.errors import ConfigError
from vlret.models import create_model
from vlret.models.coop import PromptLearner

CLASSES = ["red circle", "blue square", "green_triangle"]


def _model():
    torch.manual_seed(0)
    captions = ["a photo of a red circle.", "a blue square", "a green triangle"]
    return create_model("tiny-vit", captions=captions).eval()


def test_before_training_the_class_embeddings_are_the_plain_prompts():
    model = _model()
    learner = PromptLearner(model, CLASSES)
    assert learner.n_ctx == 4
    with torch.no_grad():
        plain = model.encode_texts(model.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]))
        torch.testing.assert_close(learner.class_embeddings(model), F.normalize(plain.embeds, dim=-1))


def test_only_the_context_learns():
    model = _model()
    model.requires_grad_(False)
    learner = PromptLearner(model, CLASSES)
    learner.class_embeddings(model).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        learner.ctx.add_(1.0)
    before = F.normalize(model.encode_texts(model.tokenize(["a photo of a red circle."])).embeds, dim=-1)
    assert not torch.allclose(learner.class_embeddings(model)[0], before[0])


def test_a_model_whose_text_tower_takes_no_embeddings_is_refused():
    model = create_model("composed", image_tower="tiny-vit", text_tower="minilm", embed_dim=8)
    with pytest.raises(ConfigError, match="input embeddings"):
        PromptLearner(model, CLASSES)


def test_local_tokens_are_the_image_pass_and_attention_rows_sum_to_one():
    model = _model()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, attention = model.local_tokens(pixels)
        plain = model.encode_images(pixels)
    torch.testing.assert_close(tokens[:, 0], plain.embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[:, 1:], plain.tokens, atol=1e-5, rtol=0)
    cfg = model.cfg
    assert attention.shape == (3, (cfg.image_size // cfg.patch_size) ** 2)
    # independently: the last block's attention from its projection weights, per head, then averaged
    trunk = model.image_encoder
    with torch.no_grad():
        x = trunk.input_tokens(pixels)
        for layer in trunk.blocks.layers[:-1]:
            x = layer(x)
        last = trunk.blocks.layers[-1]
        h = last.norm1(x)
        width, heads = h.shape[-1], last.self_attn.num_heads
        q, k, _ = (h @ last.self_attn.in_proj_weight.T + last.self_attn.in_proj_bias).split(width, dim=-1)
        q = q.view(3, -1, heads, width // heads).transpose(1, 2)
        k = k.view(3, -1, heads, width // heads).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1).mean(1)
    torch.testing.assert_close(attention, weights[:, 0, 1:], atol=1e-5, rtol=0)
