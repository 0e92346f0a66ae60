"""The loss interface: ``loss(outputs, batch) -> {term name: scalar tensor}``.

``outputs`` is what the training step computed from the model; the keys every dual-encoder step provides:

- ``image_embeds`` ``[B, D]`` and ``text_embeds`` ``[B, D]``: L2-normalised, row ``b`` of each is a pair;
- ``item_ids`` ``[B]``: the gallery item of each pair (captions of one image share an id), and
  ``caption_ids`` ``[B]``: each pair's caption, both as indices into the training split;
- ``logit_scale``: the model's learnable ``log(1 / temperature)``;
- ``scores`` ``[B images, B texts]``: the model's similarity head on the batch, when a loss declares that it
  needs ``"scores"`` and the head is not the plain dot product (:func:`batch_scores` reads either);
- ``image_tokens`` / ``image_mask``, ``text_tokens`` / ``text_mask``: token features, when a loss needs
  ``"tokens"``;
- ``head``: the model's similarity head (``"head"``), and ``fused`` ``[B, width]``: its fusion encoder's
  vector of each positive pair (``"fused"``, heads with a fusion encoder only);
- ``teacher_image`` ``[B, d_I]`` and ``teacher_text`` ``[B, d_T]``: frozen teachers' features of each pair
  (``"teacher"``; the recipe's ``teacher`` section says where they come from).

A loss declares what it reads in ``needs`` (a subset of :data:`NEEDS`); the trainer computes and gathers
nothing that no term reads. A loss that learns something from the training data (VSL's TF-IDF targets)
defines ``fit(train_split)``, which the trainer calls once before the first step (and again on resume).

A loss may learn parameters of its own (RVLR's teacher projections, lambda, tau_2): it is then an
``nn.Module`` with a ``prepare(context)`` method (:class:`LossContext`: the widths it needs to know), called
before the optimiser is built; its parameters train with the model's non-backbone ones and are saved in the
trainer's checkpoints. ``term_weights`` (optional) weights the terms a loss returns, on top of the recipe's
weight for the loss; ``monitor()`` (optional) gives values to log that are not losses (a temperature).

Under distributed training these tensors are already gathered from every process (with gradients), so a loss
always sees the global batch. A loss returns one or more named terms; the recipe weights and sums them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

#: what a loss can ask of the training step (see the module docstring)
NEEDS = frozenset({"embeds", "scores", "tokens", "head", "fused", "teacher"})


@dataclass(frozen=True)
class LossContext:
    """What a loss with parameters needs to know to build them."""

    embed_dim: int  # the width of the model's normalised global embeddings
    teacher_dims: tuple[int, int] | None = None  # (image, text) teacher feature widths


class Loss(Protocol):
    needs: frozenset[str]

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]: ...


def batch_scores(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B images, B texts]`` similarities: the head's when the step computed them, else the embeddings' dot."""
    if "scores" in outputs:
        return outputs["scores"]
    return outputs["image_embeds"] @ outputs["text_embeds"].T


def same_item_mask(item_ids: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` bool: True where rows ``i`` and ``j`` come from the same gallery item (diagonal included)."""
    return item_ids[:, None] == item_ids[None, :]


def require_number(name: str, value: float, low: float = 0.0, strict: bool = False) -> None:
    """A loss setting must be a finite number ``>= low`` (``> low`` when ``strict``); NaN fails too."""
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, not {value}")
