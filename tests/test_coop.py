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
