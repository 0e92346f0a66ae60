"""Symmetric InfoNCE (CLIP / ALBEF ITC) with soft multi-positive targets and a clamped learnable temperature.

With ``s_ij = exp(logit_scale) * v_i . t_j`` and ``pos_ij = 1[item_i == item_j]``, the targets are
``y_ij = pos_ij / sum_k pos_ik``: captions of the same image in one batch are positives, not negatives. The
loss is ``1/2 [ -1/B sum_i sum_j y_ij log softmax_j(s_i.) - 1/B sum_j sum_i y_ji log softmax_i(s_.j) ]``.
With one caption per image it is exactly CLIP's loss. ``logit_scale`` is clamped to ``log(max_logit_scale)``
(CLIP's 100) so the temperature never collapses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlret.losses.base import batch_scores, require_number, same_item_mask


@dataclass
class InfoNCELoss:
    max_logit_scale: float = 100.0
    multi_positive: bool = True  # False: only the diagonal is positive (plain CLIP)
    needs: ClassVar[frozenset[str]] = frozenset({"scores"})

    def __post_init__(self) -> None:
        require_number("max_logit_scale", self.max_logit_scale, strict=True)  # its log caps the scale

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        scale = outputs["logit_scale"].clamp(max=math.log(self.max_logit_scale)).exp()
        logits = scale * batch_scores(outputs)  # [B images, B texts], the model's head (cosine by default)
        if self.multi_positive:
            positives = same_item_mask(outputs["item_ids"]).to(logits.dtype)
        else:
            positives = torch.eye(len(logits), dtype=logits.dtype, device=logits.device)
        targets = positives / positives.sum(
            1, keepdim=True
        )  # the mask is symmetric: the same targets serve both directions
        i2t = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
        t2i = -(targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()
        return {"infonce": (i2t + t2i) / 2}
