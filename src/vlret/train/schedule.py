"""Learning-rate schedules as multipliers of the peak rate: linear warm-up, then cosine, linear decay, step or
constant."""

from __future__ import annotations

import math
from collections.abc import Callable

from vlret.train.recipe import ScheduleSection


def warmup_steps(section: ScheduleSection, total_steps: int) -> int:
    return section.warmup_steps or int(round(section.warmup_fraction * total_steps))


def lr_multiplier(section: ScheduleSection, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """``f(step)`` for ``LambdaLR``: the factor applied to each group's peak learning rate at ``step``."""
    warm = warmup_steps(section, total_steps)
    if section.name == "warmup_cosine_clip4clip":
        return _clip4clip_factor(section.warmup_fraction, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if section.name == "constant":
            return 1.0
        if section.name == "step":
            epoch = step // max(steps_per_epoch, 1)
            return section.gamma ** sum(epoch >= e for e in section.step_epochs)
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        floor = section.min_lr_ratio
        if section.name == "linear":  # ALBEF / X-VLM / RVLR: straight down to the floor
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _clip4clip_factor(warmup: float, total_steps: int) -> Callable[[int], float]:
    """CLIP4Clip's ``warmup_cosine`` at ``x = step / total_steps``: ``x / warmup`` below ``warmup``, else
    ``0.5 (1 + cos(pi x))``, a cosine over the whole run (0.976 at 10%, 0.422 at 55%, 0.024 at 90%), so the
    rate jumps from about 1 to cos at the end of the warm-up; its first step has rate 0."""

    def factor(step: int) -> float:
        x = step / max(1, total_steps)
        if x < warmup:
            return x / warmup
        return 0.5 * (1.0 + math.cos(math.pi * x))

    return factor
