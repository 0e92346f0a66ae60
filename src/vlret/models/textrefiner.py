"""TextRefiner's local cache and feature aggregation (Xie et al., AAAI 2025; spec sections 3.4 and 3.5).

The cache holds ``M`` unit vectors (25), "attribute" prototypes of the image encoder's aligned local tokens:

- **write** (training only, no gradient; after the step's losses are formed): with ``V`` the batch's
  L2-normalised aligned tokens and ``S = V A^T``, every token goes to its most similar entry; entry ``j``
  becomes ``m A_j + (1 - m) sum_{i -> j} w_i V_i`` with ``w_i = exp(S_ij - max_i' S_i'j)`` (the column max over
  *all* tokens) and ``m = 0.8``; entries no token chose stay as they are; every row is re-normalised.
- **read** (training and test): ``P = softmax_row(T A^T)`` over the entries and ``F = P A``, the class's
  fine-grained description.
- **aggregation**: ``T~ = T + alpha W [T ; F]`` with ``W`` a bias-free ``2d -> d`` linear map and
  ``alpha = 0.2``; ``T~`` is not re-normalised.

At test time the cache is frozen and ``T~`` depends on the class names only, so it is computed once per class
list: TextRefiner costs nothing per image. The cache is a buffer, saved and restored with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocalCache(nn.Module):
    """``M`` unit vectors of width ``d``, written by momentum and read by softmax attention."""

    def __init__(self, size: int = 25, dim: int = 512, momentum: float = 0.8, generator=None):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], not {momentum}")
        self.momentum = momentum
        # the released initialisation: uniform [0, 1) noise, rows normalised (all in the positive orthant)
        self.register_buffer("entries", F.normalize(torch.rand(size, dim, generator=generator), dim=1))

    @torch.no_grad()
    def write(self, tokens: torch.Tensor) -> None:
        """Update the entries from ``tokens`` ``[n, d]`` (normalised here); see the module docstring."""
        v = F.normalize(tokens.detach().to(self.entries.dtype), dim=1)
        sims = v @ self.entries.T  # [n, M]
        chosen = sims.argmax(dim=1)
        weights = torch.exp(sims - sims.max(dim=0, keepdim=True).values)  # per entry, over all tokens
        picked = weights.gather(1, chosen[:, None])  # [n, 1]: w_i for the entry token i chose
        sums = torch.zeros_like(self.entries).index_add_(0, chosen, picked * v)
        hit = torch.zeros(len(self.entries), dtype=torch.bool, device=v.device)
        hit[chosen] = True
        updated = self.momentum * self.entries + (1 - self.momentum) * sums
        # a new tensor, not an in-place update: this step's loss read the old entries and still needs them
        self.entries = torch.where(hit[:, None], F.normalize(updated, dim=1), self.entries)

    def read(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P [C, M], F [C, d])`` for class embeddings ``text`` ``[C, d]``."""
        attention = torch.softmax(F.normalize(text, dim=1) @ self.entries.T, dim=1)
        return attention, attention @ self.entries


class FeatureAlignment(nn.Module):
    """The token-wise MLP that brings image tokens towards the text side (training only):
    ``Linear -> BatchNorm (over every token of the batch) -> ReLU -> Linear``."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.first, self.norm, self.second = nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.reshape(-1, tokens.shape[-1])
        return self.second(torch.relu(self.norm(self.first(flat)))).reshape(tokens.shape)


class Aggregation(nn.Module):
    """``T~ = T + alpha W [T ; F]`` with a bias-free ``W``."""

    def __init__(self, dim: int = 512, alpha: float = 0.2):
        super().__init__()
        self.alpha = alpha
        self.proj = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, text: torch.Tensor, described: torch.Tensor) -> torch.Tensor:
        return text + self.alpha * self.proj(torch.cat([text, described], dim=1))
