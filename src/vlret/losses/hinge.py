"""VSE++ hinge triplet loss (Faghri et al.), as SGRAF, VSL and AVSE use it.

With ``S`` the ``[B, B]`` image x caption similarity (positives on the diagonal) and margin ``m``:
``c_s[i, j] = [m + S[i, j] - S[i, i]]_+`` (caption retrieval) and ``c_im[i, j] = [m + S[i, j] - S[j, j]]_+``
(image retrieval), diagonals zeroed. Hardest negatives: ``sum_i max_j c_s + sum_j max_i c_im``; otherwise the
sums over all negatives. During the first ``warmup_epochs`` epochs all negatives are used (AVSE's
``vse_mean_warmup_epochs``).

Reduction: ``sum`` is the default because every seed method sums (and their learning rates are tuned for
it); ``mean`` divides by the batch size. Same-image captions in a batch are negatives in the seeds' code;
``mask_same_image=True`` excludes them instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlret.losses.base import batch_scores, require_number, same_item_mask


@dataclass
class HingeLoss:
    margin: float = 0.2
    max_violation: bool = True
    warmup_epochs: int = 0
    reduction: str = "sum"  # or "mean"
    mask_same_image: bool = False
    needs: ClassVar[frozenset[str]] = frozenset({"scores"})

    def __post_init__(self) -> None:
        require_number("margin", self.margin)
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, not {self.warmup_epochs}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', not {self.reduction!r}")

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        scores = batch_scores(outputs)  # the model's head (cosine by default)
        diagonal = scores.diag()
        cost_caption = (self.margin + scores - diagonal[:, None]).clamp(min=0)
        cost_image = (self.margin + scores - diagonal[None, :]).clamp(min=0)
        if self.mask_same_image:
            excluded = same_item_mask(outputs["item_ids"])
        else:
            excluded = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
        cost_caption = cost_caption.masked_fill(excluded, 0)
        cost_image = cost_image.masked_fill(excluded, 0)
        hardest = self.max_violation and batch.get("epoch", 0) >= self.warmup_epochs
        if hardest:
            total = cost_caption.max(1).values.sum() + cost_image.max(0).values.sum()
        else:
            total = cost_caption.sum() + cost_image.sum()
        if self.reduction == "mean":
            total = total / len(scores)
        return {"hinge": total}
