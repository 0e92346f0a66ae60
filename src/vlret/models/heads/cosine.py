"""Cosine similarity of the global embeddings: the dual encoder's head and vlret's default."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlret.models.features import Features
from vlret.models.heads.base import SimilarityHead


class CosineHead(SimilarityHead):
    """``normalize(t) . normalize(v)`` of the global embeddings."""

    name = "cosine"
    is_dot_product = True

    def score(self, texts: Features, items: Features) -> torch.Tensor:
        return F.normalize(texts.embeds.float(), dim=-1) @ F.normalize(items.embeds.float(), dim=-1).T

    def score_pairs(self, texts: Features, items: Features, chunk: int = 256) -> torch.Tensor:
        t = F.normalize(texts.embeds.float(), dim=-1)
        v = F.normalize(items.embeds.float(), dim=-1)
        return (t * v).sum(-1)
