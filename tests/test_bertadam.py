"""CLIP4Clip's optimiser and schedule (issue 38, section 3), against an independent numpy formulation of
the released ``BertAdam.step`` and ``warmup_cosine``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlret.train.bertadam import BertAdam, released_no_decay
from vlret.train.recipe import ScheduleSection
from vlret.train.schedule import lr_multiplier


def _released_warmup_cosine(x: float, warmup: float) -> float:
    return x / warmup if x < warmup else 0.5 * (1.0 + math.cos(math.pi * x))


def test_the_schedule_is_released_warmup_cosine():
    """At 10%, 55% and 90% of the run: 0.976, 0.422, 0.024 (our cosine after a 10% warm-up: 1.0, 0.5,
    0.030); the first step has rate 0, and below 10% it rises linearly."""
    factor = lr_multiplier(ScheduleSection(name="warmup_cosine_clip4clip", warmup_fraction=0.1), 100, 10)
    assert [round(factor(s), 3) for s in (10, 55, 90)] == [0.976, 0.422, 0.024]
    assert factor(0) == 0.0 and factor(5) == pytest.approx(0.5)
    ours = lr_multiplier(ScheduleSection(name="cosine", warmup_fraction=0.1), 100, 10)
    assert [round(ours(s), 3) for s in (10, 55, 90)] == [1.0, 0.5, 0.03]


def test_a_few_steps_equal_the_released_update():
    rng = np.random.default_rng(0)
    shapes = {"proj.weight": (3, 4), "proj.bias": (4,), "logit_scale": ()}
    start = {name: np.asarray(rng.standard_normal(shape), dtype=np.float32) for name, shape in shapes.items()}
    grads = [
        {name: 3 * rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(4)
    ]
    lr, b1, b2, eps, wd, clip, total = 0.01, 0.9, 0.98, 1e-6, 0.2, 1.0, 10

    # the released step, in numpy: clip each tensor, no bias correction, decay added to the update
    want = {name: value.astype(np.float64) for name, value in start.items()}
    m = {name: np.zeros(shape) for name, shape in shapes.items()}
    v = {name: np.zeros(shape) for name, shape in shapes.items()}
    for step, g in enumerate(grads):
        rate = lr * _released_warmup_cosine(step / total, 0.1)
        for name in shapes:
            grad = g[name].astype(np.float64)
            norm = np.sqrt((grad**2).sum())
            grad = grad * min(1.0, clip / (norm + 1e-6))  # torch's clip_grad_norm_, per tensor
            m[name] = b1 * m[name] + (1 - b1) * grad
            v[name] = b2 * v[name] + (1 - b2) * grad**2
            update = m[name] / (np.sqrt(v[name]) + eps)
            if not released_no_decay(name):
                update = update + wd * want[name]
            want[name] = want[name] - rate * update

    params = {name: torch.nn.Parameter(torch.tensor(np.array(value))) for name, value in start.items()}
    groups = [
        {"params": [p for n, p in params.items() if not released_no_decay(n)], "weight_decay": wd},
        {"params": [p for n, p in params.items() if released_no_decay(n)], "weight_decay": 0.0},
    ]
    optimizer = BertAdam(groups, lr=lr, betas=(b1, b2), eps=eps, max_grad_norm=clip)
    factor = lr_multiplier(ScheduleSection(name="warmup_cosine_clip4clip", warmup_fraction=0.1), total, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for g in grads:
        for name, p in params.items():
            p.grad = torch.tensor(np.array(g[name]))
        optimizer.step()
        scheduler.step()
    for name, p in params.items():
        np.testing.assert_allclose(p.detach().numpy(), want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert optimizer.state[params["proj.weight"]]["step"] == 4


def test_decay_is_skipped_only_for_biases_as_released():
    assert released_no_decay("text_model.encoder.layers.0.mlp.fc1.bias")
    assert released_no_decay("bert.encoder.layer.0.output.LayerNorm.weight")
    for name in ("logit_scale", "vision_model.pre_layrnorm.weight", "text_model.encoder.layers.0.layer_norm1.weight",
                 "text_model.embeddings.token_embedding.weight", "visual.ln_post.weight"):  # fmt: skip
        assert not released_no_decay(name), name


def test_the_clip4clip_recipes_use_it_and_the_trainer_groups_by_name(tmp_path):
    from vlret.train import load_recipe
    from vlret.train.recipe import builtin_recipe
    from vlret.train.trainer import make_optimizer, parameter_groups

    for name in ("clip4clip_msrvtt", "clip4clip_msvd", "clip4clip_lsmdc", "clip4clip_didemo"):
        recipe = load_recipe(builtin_recipe(name), [])
        assert recipe.optim.name == "bertadam" and recipe.optim.betas == [0.9, 0.98], name
        assert recipe.schedule.name == "warmup_cosine_clip4clip" and recipe.schedule.warmup_fraction == 0.1
    from vlret.models import create_model

    model = create_model("tiny-cnn", captions=["a red circle"])
    recipe = load_recipe(builtin_recipe("clip4clip_msrvtt"), [])
    groups = parameter_groups(model, recipe)
    decaying = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in decaying) == (not released_no_decay(name)), name
    assert isinstance(make_optimizer(groups, recipe.optim), BertAdam)
    with pytest.raises(Exception, match="optim.name"):
        load_recipe(builtin_recipe("clip4clip_msrvtt"), ["optim.name=sgd"])
