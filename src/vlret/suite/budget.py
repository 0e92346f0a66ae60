"""Fitting a suite's training into ``--budget-minutes``.

Each trained row is probed once: a few steps of its recipe on the suite's data, timed, and one validation.
From the probe's seconds per step and per validation, every training cell gets an equal share of what is
left of the budget (after the probes and a reserve for evaluation and re-ranking) and as many whole epochs
of its recipe as fit in it, up to the recipe's own; a share too small for one epoch trains part of one
(``train.max_steps``). The probes' measurements and the plan are written to the suite's ``plan.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vlret.suite.rows import TrainRow

#: steps of a probe: the first steps carry one-off costs (a frozen tower's memo filling), so the estimate
#: errs on the slow side
PROBE_STEPS = 3

#: share of the budget kept for evaluation, ensembles and re-ranking
EVAL_RESERVE = 0.15


@dataclass
class Probe:
    seconds_per_step: float
    validation_seconds: float
    steps_per_epoch: int
    recipe_epochs: int


def probe_row(row: TrainRow, overrides: list[str], out: Path) -> Probe:
    """Train ``row`` for :data:`PROBE_STEPS` steps in ``out`` and time it."""
    from vlret.train import Trainer, load_recipe
    from vlret.train.logger import read_metrics
    from vlret.train.recipe import builtin_recipe

    recipe = load_recipe(builtin_recipe(row.recipe), [*overrides, f"train.max_steps={PROBE_STEPS}"])
    trainer = Trainer(recipe, progress=False, overwrite=True)  # a probe killed midway starts again
    started = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - started
    train = [r for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "train"]
    rate = train[-1]["samples_per_s"] if train else recipe.train.batch_size / max(total, 1e-9)
    per_step = recipe.train.batch_size * recipe.train.grad_accum_steps / rate
    # the last logged window may hold fewer than PROBE_STEPS steps; what is not training is validation
    validation = max(0.0, total - PROBE_STEPS * per_step)
    return Probe(per_step, validation, trainer.steps_per_epoch, recipe.train.epochs)


def plan_training(probe: Probe, seconds: float) -> dict:
    """Epochs (or steps of one epoch) that fit in ``seconds`` for a run measured by ``probe``."""
    epoch_seconds = probe.steps_per_epoch * probe.seconds_per_step + probe.validation_seconds
    epochs = min(probe.recipe_epochs, math.floor(seconds / max(epoch_seconds, 1e-9)))
    if epochs >= 1:
        return {"epochs": epochs, "max_steps": None, "overrides": [f"train.epochs={epochs}"]}
    steps = max(1, math.floor((seconds - probe.validation_seconds) / max(probe.seconds_per_step, 1e-9)))
    return {"epochs": 1, "max_steps": steps, "overrides": ["train.epochs=1", f"train.max_steps={steps}"]}


def share_budget(
    budget_seconds: float, spent_seconds: float, probes: dict[str, Probe], cells_per_row: int
) -> dict[str, dict]:
    """Each training cell's plan, given the budget and what the probes already took."""
    left = budget_seconds * (1 - EVAL_RESERVE) - spent_seconds
    share = max(0.0, left) / max(1, len(probes) * cells_per_row)
    return {
        name: {**plan_training(probe, share), "share_seconds": round(share, 1), "probe": asdict(probe)}
        for name, probe in probes.items()
    }
