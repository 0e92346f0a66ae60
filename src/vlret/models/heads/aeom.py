"""AVSE's asymmetric embedding optimal matching (AEOM) over meta-semantic chunks.

An item's global vector ``x`` (``V`` views of width ``D``, concatenated) is cut into ``P = V*D/d`` chunks of
size ``d``; a text's vector ``t`` (width ``D``) into ``Q = D/d`` chunks. Every chunk is L2-normalised on its
own (``eps`` added to the norm), and

    ``S(x, t) = sum over text chunks q of  max over item chunks p of  <u_p, w_q>``,

a MaxSim with the text's chunks as queries: a text chunk may match any view and any chunk position. With
several chunk sizes the scores are summed. One view with ``d = D`` is exactly the cosine.

A block of texts against a block of items is one matrix product of the stacked chunks,
``[n_texts * Q, d] @ [n_items * P, d]^T``, reduced by a max and a sum; no pair is ever scored on its own.
``matching: sinkhorn`` first replaces each pair's ``P x Q`` cosines by the log-domain optimal-transport plan
of SuperGlue (a dustbin row and column scored by one learnable scalar, uniform marginals, ``sinkhorn_iters``
iterations, scaled by ``P + Q``); the released code ships it commented out, so it is off by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vlret.models.features import Features
from vlret.models.heads.base import SimilarityHead

MATCHINGS = ("max", "sinkhorn")


def chunk_normalize(vectors: torch.Tensor, size: int, eps: float = 1e-8) -> torch.Tensor:
    """``[n, width]`` -> ``[n, width / size, size]`` chunks, each divided by its own norm plus ``eps``."""
    n, width = vectors.shape
    if width % size:
        raise ValueError(f"an embedding of width {width} cannot be cut into chunks of {size}")
    chunks = vectors.float().reshape(n, width // size, size)
    return chunks / (chunks.norm(dim=-1, keepdim=True) + eps)


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor, iters: int) -> torch.Tensor:
    """SuperGlue's log-domain Sinkhorn on ``[..., P, Q]`` scores; returns the ``[..., P, Q]`` log plan scaled
    by ``P + Q`` (dustbins dropped). Rows carry mass ``1/(P+Q)`` each, the row dustbin ``Q/(P+Q)``;
    columns likewise."""
    *batch, p, q = scores.shape
    bins_col = bin_score.expand(*batch, p, 1)
    bins_row = bin_score.expand(*batch, 1, q + 1)
    couplings = torch.cat([torch.cat([scores, bins_col], -1), bins_row], -2)  # [..., P+1, Q+1]
    norm = -math.log(p + q)
    log_mu = torch.full((p + 1,), norm, device=scores.device, dtype=scores.dtype)
    log_mu[-1] = math.log(q) + norm
    log_nu = torch.full((q + 1,), norm, device=scores.device, dtype=scores.dtype)
    log_nu[-1] = math.log(p) + norm
    u = torch.zeros_like(couplings[..., :, 0])
    v = torch.zeros_like(couplings[..., 0, :])
    for _ in range(iters):
        u = log_mu - torch.logsumexp(couplings + v[..., None, :], dim=-1)
        v = log_nu - torch.logsumexp(couplings + u[..., :, None], dim=-2)
    plan = couplings + u[..., :, None] + v[..., None, :] - norm
    return plan[..., :p, :q]


class AEOMHead(SimilarityHead):
    """Sum over text chunks of the best item chunk's cosine; see the module docstring."""

    name = "aeom"

    def __init__(
        self,
        chunk_sizes: Sequence[int] = (256,),
        matching: str = "max",
        sinkhorn_iters: int = 20,
        eps: float = 1e-8,
    ):
        super().__init__()
        sizes = [chunk_sizes] if isinstance(chunk_sizes, int) else list(chunk_sizes)
        if not sizes or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(
                f"chunk_sizes must be a non-empty list of positive integers, not {chunk_sizes!r}"
            )
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, not {matching!r}")
        if sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be at least 1, not {sinkhorn_iters}")
        self.chunk_sizes = [int(s) for s in sizes]
        self.matching, self.sinkhorn_iters, self.eps = matching, sinkhorn_iters, eps
        # the dustbin score of Sinkhorn matching (SuperGlue's), learnt; unused by max matching
        self.bin_score = nn.Parameter(torch.zeros(())) if matching == "sinkhorn" else None

    def score(self, texts: Features, items: Features) -> torch.Tensor:
        total = texts.embeds.new_zeros((len(texts), len(items)), dtype=torch.float32)
        for size in self.chunk_sizes:
            total = total + self._score_chunks(texts.embeds, items.embeds, size)
        return total

    def _score_chunks(
        self, text_vectors: torch.Tensor, item_vectors: torch.Tensor, size: int
    ) -> torch.Tensor:
        w = chunk_normalize(text_vectors, size, self.eps)  # [Nt, Q, d]
        u = chunk_normalize(item_vectors, size, self.eps)  # [Ni, P, d]
        (n_texts, q, _), (n_items, p, _) = w.shape, u.shape
        cosines = (w.reshape(n_texts * q, size) @ u.reshape(n_items * p, size).T).view(n_texts, q, n_items, p)
        if self.matching == "sinkhorn":
            pairs = cosines.permute(0, 2, 3, 1)  # [Nt, Ni, P, Q]: a pair's image chunks are its rows
            plan = log_optimal_transport(pairs, self.bin_score.to(pairs.dtype), self.sinkhorn_iters)
            return plan.amax(dim=2).sum(dim=2)
        return cosines.amax(dim=3).sum(dim=1)

    def score_pairs(self, texts: Features, items: Features, chunk: int = 256) -> torch.Tensor:
        if self.matching == "sinkhorn":
            return super().score_pairs(texts, items, chunk)
        total = texts.embeds.new_zeros(len(texts), dtype=torch.float32)
        for size in self.chunk_sizes:
            w = chunk_normalize(texts.embeds, size, self.eps)
            u = chunk_normalize(items.embeds, size, self.eps)
            total = total + torch.einsum("nqd,npd->nqp", w, u).amax(dim=2).sum(dim=1)
        return total

    def pair_cost(self, texts: Features, items: Features) -> int:
        widths = texts.embeds.shape[1], items.embeds.shape[1]
        cost = sum((widths[0] // s) * (widths[1] // s) for s in self.chunk_sizes)
        return cost if self.matching == "max" else 4 * cost  # Sinkhorn keeps a few plan-sized tensors

    def options(self) -> dict:
        return {
            "chunk_sizes": list(self.chunk_sizes),
            "matching": self.matching,
            "sinkhorn_iters": self.sinkhorn_iters,
            "eps": self.eps,
        }
