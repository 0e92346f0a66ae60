"""Recipe validation, overrides and learning-rate schedules."""

import math

import pytest

from vlret.errors import ConfigError
from vlret.train.recipe import ScheduleSection, load_recipe
from vlret.train.schedule import lr_multiplier


def test_overrides_and_types(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 4\noptim:\n  lr: 5e-4\nlosses:\n  hinge: {weight: 1.0}\n")
    recipe = load_recipe(path, ["train.epochs=2", "optim.betas=[0.9, 0.99]", "losses.hinge.margin=0.1"])
    assert recipe.train.epochs == 2 and recipe.optim.lr == 5e-4 and recipe.optim.betas == [0.9, 0.99]
    assert recipe.losses == {"hinge": {"weight": 1.0, "margin": 0.1}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "train: unknown key 'epoch'; valid keys: epochs, batch_size"),
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
        ("train.epochs=2.5", "train.epochs: expected int"),
        ("losses.triplet={weight: 1}", "unknown loss 'triplet'; valid: infonce, hinge"),
        ("losses.hinge={margn: 1}", "losses.hinge: unknown key 'margn'; valid keys: weight, margin"),
        ("data.val_split=test", "never chosen on the test split"),
        (
            "schedule.name=exponential",
            "schedule.name: expected cosine, linear, step, constant or warmup_cosine_clip4clip",
        ),
        ("bogus=1", "unknown key 'bogus'; valid keys: model, data, losses"),
        ("losses.infonce.weight=0", "every term has weight 0"),
    ],
)
def test_invalid_keys_and_values(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_recipe(None, [override])


def test_malformed_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_recipe(path)


def test_cosine_with_warmup_by_hand():
    f = lr_multiplier(ScheduleSection(name="cosine", warmup_steps=4), total_steps=14, steps_per_epoch=7)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0  # progress 0
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway through the 10 cosine steps
    assert f(14) == pytest.approx(0.0)


def test_step_schedule_by_hand():
    f = lr_multiplier(
        ScheduleSection(name="step", step_epochs=[2, 3], gamma=0.3), total_steps=50, steps_per_epoch=10
    )
    assert (f(0), f(19), f(20), f(30), f(45)) == (1.0, 1.0, 0.3, pytest.approx(0.09), pytest.approx(0.09))
