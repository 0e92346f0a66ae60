"""Image-text matching with hard negatives (ALBEF / X-VLM / RVLR, spec section 4.2).

With no gradient, each image's weights over the batch's captions are ``softmax_j(v_i . t_j / tau) + 1e-5``
and each caption's over the images ``softmax_j(t_i . v_j / tau) + 1e-5``, with every entry that shares the
anchor's item id (the diagonal included) set to 0. Each caption draws one negative image and each image one
negative caption from these weights. The head's fusion encoder runs on the ``B`` positive pairs and the
``2B`` negative ones; the loss is the cross-entropy of its match logits (1 for positives, 0 for negatives)
averaged over all ``3B`` rows. An anchor whose every other entry shares its item has no negative and adds
none. ``tau`` is the ITC temperature (the model's ``logit_scale``, clamped as the ITC loss clamps it).

The positive pairs' fused vectors come from the training step (``outputs["fused"]``), which computes them
once for every term that reads them (structure distillation does too). Under distributed training the loss
sees the gathered batch like every term, so negatives come from the global batch and every process fuses
all of its pairs; the released code samples and fuses per process (a cheaper, local variant not built).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlret.losses.base import same_item_mask
from vlret.models.features import Features

NEGATIVE_FLOOR = 1e-5  # added to the softmax before masking, as the released code does


def sample_negatives(weights: torch.Tensor, same: torch.Tensor, generator=None) -> torch.Tensor:
    """``[B]`` one column per row drawn with probability proportional to ``weights`` (``[B, B]``, already
    softmaxed) where ``same`` is False; -1 for a row with nothing to draw."""
    w = (weights + NEGATIVE_FLOOR).masked_fill(same, 0.0)
    has = w.sum(1) > 0
    picks = torch.full((len(w),), -1, dtype=torch.long, device=w.device)
    if has.any():
        picks[has] = torch.multinomial(w[has], 1, generator=generator).squeeze(1)
    return picks


def _features(outputs: dict, side: str) -> Features:
    return Features(outputs[f"{side}_embeds"], outputs[f"{side}_tokens"], outputs[f"{side}_mask"])


@dataclass(eq=False)
class ITMLoss:
    max_logit_scale: float = 100.0
    needs: ClassVar[frozenset[str]] = frozenset({"tokens", "head", "fused"})

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        head = outputs["head"]
        v, t = outputs["image_embeds"], outputs["text_embeds"]
        same = same_item_mask(outputs["item_ids"])
        with torch.no_grad():
            scale = outputs["logit_scale"].clamp(max=math.log(self.max_logit_scale)).exp()
            image_for_text = sample_negatives(F.softmax(scale * t @ v.T, dim=1), same)
            text_for_image = sample_negatives(F.softmax(scale * v @ t.T, dim=1), same)
        texts, items = _features(outputs, "text"), _features(outputs, "image")
        rows = torch.arange(len(t), device=t.device)
        a = image_for_text >= 0  # caption b with a negative image
        b = text_for_image >= 0  # image b with a negative caption
        neg_text_rows = torch.cat([rows[a], text_for_image[b]])
        neg_item_rows = torch.cat([image_for_text[a], rows[b]])
        negatives = head.fuse(texts.select(neg_text_rows), items.select(neg_item_rows))
        logits = head.match_logits(torch.cat([outputs["fused"], negatives]))
        labels = torch.cat(
            [torch.ones(len(t), dtype=torch.long), torch.zeros(len(negatives), dtype=torch.long)]
        ).to(logits.device)
        return {"itm": F.cross_entropy(logits.float(), labels)}
