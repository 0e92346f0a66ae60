"""Token-level late interaction (ColBERT's MaxSim) between a text's words and an item's patches or regions.

``s(t, v) = 1/|W| sum_{w in W} max_{r in R} cos(t_w, v_r)`` over the text's real tokens ``W`` and the item's
real tokens ``R`` (masks select them). Without parameters of its own, it is the simplest head that needs
token features: the shape AVSE's chunk matching and SCAN-style word-region heads generalise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlret.models.features import Features
from vlret.models.heads.base import SimilarityHead


def _tokens(features: Features, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    if features.tokens is None:
        raise ValueError(f"the maxsim head needs {side} tokens; this model's {side} encoder returns none")
    tokens = F.normalize(features.tokens.float(), dim=-1)
    mask = features.mask
    if mask is None:
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return tokens, mask.bool()


class MaxSimHead(SimilarityHead):
    """Mean over text tokens of the best-matching item token's cosine."""

    name = "maxsim"
    uses_tokens = True

    def score(self, texts: Features, items: Features) -> torch.Tensor:
        t, t_mask = _tokens(texts, "text")
        v, v_mask = _tokens(items, "item")
        sims = torch.einsum("awd,brd->abwr", t, v)  # [texts, items, words, regions]
        sims = sims.masked_fill(~v_mask[None, :, None, :], -torch.inf)
        best = sims.amax(dim=3).masked_fill(~t_mask[:, None, :], 0.0)  # [texts, items, words]
        return best.sum(2) / t_mask.sum(1, keepdim=True).clamp(min=1)

    def pair_cost(self, texts: Features, items: Features) -> int:
        return texts.tokens.shape[1] * items.tokens.shape[1]

    def score_pairs(self, texts: Features, items: Features, chunk: int = 256) -> torch.Tensor:
        t, t_mask = _tokens(texts, "text")
        v, v_mask = _tokens(items, "item")
        sims = torch.einsum("nwd,nrd->nwr", t, v).masked_fill(~v_mask[:, None, :], -torch.inf)
        best = sims.amax(dim=2).masked_fill(~t_mask, 0.0)
        return best.sum(1) / t_mask.sum(1).clamp(min=1)
