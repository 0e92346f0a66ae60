"""RVLR's representation-level distillation (spec section 4.3): student embeddings against projected
teacher features, one direction.

``z^I_j = norm(P_I x^I_j)`` and ``z^T_j = norm(P_T x^T_j)`` are the teachers' features of the batch's pairs
through trainable linear maps into the student's space. With soft targets ``y_ij = 1[item_i = item_j] /
sum_k 1[item_i = item_k]`` (a caption's siblings are positives too):

``L_iic = -1/B sum_i sum_j y_ij log softmax_j(v_i . z^I_j / tau)``, and ``L_ttc`` the same with
``(t_i, z^T_j)``.

Only the student-to-teacher rows are used (no symmetric term). ``tau`` is the ITC temperature. Gradients
reach the student's encoders and the projections. The released weights are ``iic`` 1 and ``ttc`` 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlret.losses.base import LossContext, require_number, same_item_mask


def soft_contrastive(
    queries: torch.Tensor, keys: torch.Tensor, item_ids: torch.Tensor, scale
) -> torch.Tensor:
    """``-1/B sum_i sum_j y_ij log softmax_j(scale * q_i . k_j)`` with multi-positive targets by item."""
    positives = same_item_mask(item_ids).to(queries.dtype)
    targets = positives / positives.sum(1, keepdim=True)
    return -(targets * F.log_softmax(scale * queries @ keys.T, dim=1)).sum(1).mean()


@dataclass(eq=False)
class RepresentationDistillation(nn.Module):
    iic_weight: float = 1.0
    ttc_weight: float = 2.0
    max_logit_scale: float = 100.0
    needs: ClassVar[frozenset[str]] = frozenset({"teacher"})

    def __post_init__(self) -> None:
        require_number("max_logit_scale", self.max_logit_scale, strict=True)
        nn.Module.__init__(self)
        self.image_proj: nn.Linear | None = None
        self.text_proj: nn.Linear | None = None

    @property
    def term_weights(self) -> dict[str, float]:
        return {"iic": self.iic_weight, "ttc": self.ttc_weight}

    def prepare(self, context: LossContext) -> None:
        """The teacher projections, from the teachers' widths into the student's embedding width."""
        if context.teacher_dims is None:
            raise ValueError(
                "representation distillation needs a teacher: add a teacher section to the recipe"
            )
        image_dim, text_dim = context.teacher_dims
        self.image_proj = nn.Linear(image_dim, context.embed_dim)
        self.text_proj = nn.Linear(text_dim, context.embed_dim)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        if self.image_proj is None:
            raise RuntimeError("prepare(context) must run before the first step")
        scale = outputs["logit_scale"].clamp(max=math.log(self.max_logit_scale)).exp()
        ids = outputs["item_ids"]
        z_image = F.normalize(self.image_proj(outputs["teacher_image"].float()), dim=-1)
        z_text = F.normalize(self.text_proj(outputs["teacher_text"].float()), dim=-1)
        return {
            "iic": soft_contrastive(outputs["image_embeds"], z_image, ids, scale),
            "ttc": soft_contrastive(outputs["text_embeds"], z_text, ids, scale),
        }
