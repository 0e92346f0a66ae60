"""RVLR's structure-aware distillation (spec section 4.4): the student's in-batch relation matrix against a
mix of the two teachers' relation matrices.

With every row L2-normalised and ``tau_2`` the relation temperature:

- the student's relations ``S^F = H H^T / tau_2``, where ``H`` is, by ``student``: the fusion encoder's vector
  of each positive pair (``fused``, the paper's), or the image or text embeddings (``image``, ``text``), or
  both as two terms (``image+text``, for dual encoders that have no fusion encoder: an extension);
- the teachers' ``S^T = X^T X^T^T / tau_2`` and ``S^I = X^I X^I^T / tau_2`` (raw features, normalised);
- the target ``E = lambda S^T + (1 - lambda) S^I`` (not detached);
- over the ``B(B - 1)`` off-diagonal entries (row-major): ``L_kd = d(S^F, E)``, ``L_kdi = d(S^I, E)``,
  ``L_kdt = d(S^T, E)``.

``distance``: ``mae`` (mean absolute error, the paper's), ``mse``, or ``cdf`` (the released ``kl`` option,
which is an L1 between the cumulative sums of the off-diagonal vectors). The teacher terms only move
``lambda`` and ``tau_2``: for lambda in [0, 1] their sum is constant, outside it grows, so they keep a free
lambda inside [0, 1]. The released weights are ``kd`` 2, ``kdi`` 1, ``kdt`` 1.

``lambda``: learnable from 0.5 with no squashing (``learn_lambda``, the released ``--auto 1``), or fixed at
``lambda_init``. ``tau_2``: fixed at 0.07 by default. Every term is proportional to ``1 / tau_2``, so a
learnable ``tau_2`` (``learn_tau2``) only ever grows and weakens the term; ``compat: true`` turns on what the
released code does: a learnable ``tau_2``. Both values are logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlret.losses.base import LossContext

DISTANCES = ("mae", "mse", "cdf")
STUDENTS = ("fused", "image", "text", "image+text")


def relations(features: torch.Tensor, tau2: torch.Tensor | float) -> torch.Tensor:
    """``[B, B]`` cosine similarities of the rows over ``tau2``."""
    unit = F.normalize(features.float(), dim=-1)
    return unit @ unit.T / tau2


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``B(B - 1)`` off-diagonal entries, row-major."""
    size = len(matrix)
    return matrix[~torch.eye(size, dtype=torch.bool, device=matrix.device)]


def relation_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """``d(a, b)`` between two relation matrices over their off-diagonal entries."""
    x, y = off_diagonal(a), off_diagonal(b)
    if distance == "mae":
        return (x - y).abs().mean()
    if distance == "mse":
        return (x - y).pow(2).mean()
    return (torch.cumsum(x, 0) - torch.cumsum(y, 0)).abs().mean()


@dataclass(eq=False)
class StructureDistillation(nn.Module):
    distance: str = "mae"
    student: str = "fused"
    lambda_init: float = 0.5
    learn_lambda: bool = True
    tau2: float = 0.07
    learn_tau2: bool = False
    compat: bool = False  # the released code: a learnable tau_2
    kd_weight: float = 2.0
    kdi_weight: float = 1.0
    kdt_weight: float = 1.0

    def __post_init__(self) -> None:
        nn.Module.__init__(self)
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, not {self.distance!r}")
        if self.student not in STUDENTS:
            raise ValueError(f"student must be one of {STUDENTS}, not {self.student!r}")
        if self.tau2 <= 0:
            raise ValueError(f"tau2 must be positive, not {self.tau2}")
        lam = torch.tensor(float(self.lambda_init))
        self.mix = nn.Parameter(lam) if self.learn_lambda else None
        self.register_buffer("fixed_mix", lam)
        tau2 = torch.tensor(float(self.tau2))
        self.temperature = nn.Parameter(tau2) if (self.learn_tau2 or self.compat) else None
        self.register_buffer("fixed_temperature", tau2)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"teacher", "fused"} if self.student == "fused" else {"teacher"})

    @property
    def term_weights(self) -> dict[str, float]:
        return {"kd": self.kd_weight, "kdi": self.kdi_weight, "kdt": self.kdt_weight}

    def prepare(self, context: LossContext) -> None:
        if context.teacher_dims is None:
            raise ValueError("structure distillation needs a teacher: add a teacher section to the recipe")

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda, tau_2) as used now."""
        lam = self.mix if self.mix is not None else self.fixed_mix
        tau2 = self.temperature if self.temperature is not None else self.fixed_temperature
        return lam, tau2

    def monitor(self) -> dict[str, float]:
        lam, tau2 = self.current()
        return {"lambda": float(lam.detach()), "tau2": float(tau2.detach())}

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        lam, tau2 = self.current()
        s_text = relations(outputs["teacher_text"], tau2)
        s_image = relations(outputs["teacher_image"], tau2)
        target = lam * s_text + (1 - lam) * s_image
        students = {
            "fused": ["fused"],
            "image": ["image_embeds"],
            "text": ["text_embeds"],
            "image+text": ["image_embeds", "text_embeds"],
        }[self.student]
        kd = sum(relation_distance(relations(outputs[key], tau2), target, self.distance) for key in students)
        return {
            "kd": kd,
            "kdi": relation_distance(s_image, target, self.distance),
            "kdt": relation_distance(s_text, target, self.distance),
        }
