"""The loss interface: ``loss(outputs, batch) -> {term name: scalar tensor}``.

``outputs`` is what the training step computed from the model; the keys every dual-encoder step provides:

- ``image_embeds`` ``[B, D]`` and ``text_embeds`` ``[B, D]``: L2-normalised, row ``b`` of each is a pair;
- ``item_ids`` ``[B]``: the gallery item of each pair (captions of one image share an id);
- ``logit_scale``: the model's learnable ``log(1 / temperature)``.

Under distributed training these tensors are already gathered from every process (with gradients), so a loss
always sees the global batch. A loss returns one or more named terms; the recipe weights and sums them.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Loss(Protocol):
    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]: ...


def same_item_mask(item_ids: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` bool: True where rows ``i`` and ``j`` come from the same gallery item (diagonal included)."""
    return item_ids[:, None] == item_ids[None, :]
