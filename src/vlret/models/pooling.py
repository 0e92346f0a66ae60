"""Generalized pooling (GPO, Chen et al., VSE-infinity): learned weights over per-channel sorted features.

For a set of ``K`` real tokens: sinusoidal encodings of the positions ``0..K-1`` run through a bi-GRU (its two
directions averaged) and a linear map to one score per position; ``softmax(score / temperature)`` over the
real positions gives weights ``w_0..w_{K-1}``. Each channel's values are sorted in descending order over the
real tokens, and the pooled vector is ``sum_k w_k * sorted_k``. The weights depend only on ``K``, so the
result does not depend on the order of the tokens, and padded positions never count. GPO spans max pooling
(all weight on the first place) and mean pooling (equal weights).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD_SCORE = -1e4  # what padded positions get before the softmax (and what pads are sorted as)


def positional_encoding(length: int, dim: int, device=None) -> torch.Tensor:
    """Sinusoidal encodings ``[length, dim]`` (sine on even channels, cosine on odd ones)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(position * rates)
    out[:, 1::2] = torch.cos(position * rates[: dim // 2])
    return out


class GPO(nn.Module):
    """``forward(tokens [B, T, D], mask [B, T]) -> [B, D]``; see the module docstring."""

    def __init__(self, pe_dim: int = 32, hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.pe_dim, self.hidden, self.temperature = pe_dim, hidden, temperature
        self.gru = nn.GRU(pe_dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """Weights ``[B, width]`` over sorted places for sets of ``lengths`` real tokens (0 past each length)."""
        pe = positional_encoding(width, self.pe_dim, lengths.device).expand(len(lengths), width, self.pe_dim)
        packed = pack_padded_sequence(pe, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
        out = (out[..., : self.hidden] + out[..., self.hidden :]) / 2
        scores = self.score(out).squeeze(-1)
        real = torch.arange(width, device=lengths.device)[None] < lengths[:, None]
        scores = scores.masked_fill(~real, PAD_SCORE)
        return torch.softmax(scores / self.temperature, dim=1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        mask = mask.bool()
        lengths = mask.sum(1)
        # real tokens first, in descending order per channel; pads sort last and are zeroed
        filled = tokens.masked_fill(~mask[..., None], PAD_SCORE)
        ordered = filled.sort(dim=1, descending=True).values
        real = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        ordered = ordered.masked_fill(~real[..., None], 0.0)
        return (ordered * self.weights(lengths, tokens.shape[1])[..., None]).sum(1)
