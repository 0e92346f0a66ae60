"""Image-text matching (ITM): a fusion encoder over a caption's tokens and an item's tokens, and a match head
(ALBEF, X-VLM, RVLR).

A learned ``[CLS]`` vector is put in front of the caption's tokens; each fusion layer runs self-attention
over the caption, cross-attention from the caption to the item's tokens, and a feed-forward block (BERT's
post-norm order). The ``[CLS]`` output is the pair's fused vector ``h`` (RVLR's "matching representation");
the match head (``dim -> 2 dim -> LayerNorm -> GELU -> 2``) turns it into (no match, match) logits, and the
score of a pair is the raw match logit, as RVLR ranks by it.

A fusion encoder costs a forward pass per pair, so it is a **re-ranker** (``reranks``): training losses
that read batch scores use the global embeddings' dot product (ITC), and the evaluator scores only the
top-``k_test`` candidates of that first stage per query (:mod:`vlret.evaluate.reranked`). ``score`` over a
whole block still works (every pair fused) for small galleries and tests.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from vlret.models.features import Features
from vlret.models.heads.base import SimilarityHead


def _tokens(features: Features, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    if features.tokens is None:
        raise ValueError(f"the itm head needs {side} tokens; this model's {side} encoder returns none")
    mask = features.mask
    if mask is None:
        mask = torch.ones(features.tokens.shape[:2], dtype=torch.bool, device=features.tokens.device)
    return features.tokens, mask.bool()


class FusionLayer(nn.Module):
    """Self-attention over the text, cross-attention to the item, feed-forward; each with a residual and a
    LayerNorm after it."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, x_pad: torch.Tensor, y: torch.Tensor, y_pad: torch.Tensor):
        x = self.norms[0](x + self.dropout(self.self_attn(x, x, x, key_padding_mask=x_pad)[0]))
        x = self.norms[1](x + self.dropout(self.cross_attn(x, y, y, key_padding_mask=y_pad)[0]))
        return self.norms[2](x + self.dropout(self.ffn(x)))


class ITMHead(SimilarityHead):
    """A fusion encoder and a match head over (caption tokens, item tokens); see the module docstring."""

    name = "itm"
    uses_tokens = True
    reranks: ClassVar[bool] = True

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, dropout: float = 0.1, k_test: int = 128):
        """``dim``: the width of the model's tokens (a composed model's ``embed_dim``); ``k_test``: the
        first stage's candidates per query that evaluation re-scores."""
        super().__init__()
        if dim % heads:
            raise ValueError(f"itm head: dim {dim} is not divisible by heads {heads}")
        if layers < 1 or k_test < 1:
            raise ValueError(f"itm head: layers and k_test must be at least 1, not {layers} and {k_test}")
        self.dim, self.n_layers, self.heads, self.dropout, self.k_test = dim, layers, heads, dropout, k_test
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        self.layers = nn.ModuleList(FusionLayer(dim, heads, dropout) for _ in range(layers))
        self.match = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, 2)
        )

    def fuse(self, texts: Features, items: Features) -> torch.Tensor:
        """``[P, dim]`` the fused vector of each pair ``(texts[p], items[p])``."""
        t, t_mask = _tokens(texts, "text")
        v, v_mask = _tokens(items, "item")
        if t.shape[-1] != self.dim or v.shape[-1] != self.dim:
            raise ValueError(
                f"itm head of dim {self.dim}: got text tokens of width {t.shape[-1]} and item tokens of "
                f"width {v.shape[-1]}; set the head's dim to the model's embed_dim"
            )
        cls = self.cls.to(t.dtype).expand(len(t), 1, -1)
        x = torch.cat([cls, t], dim=1)
        x_pad = torch.cat([torch.zeros_like(t_mask[:, :1]), ~t_mask], dim=1)
        y_pad = ~v_mask
        for layer in self.layers:
            x = layer(x, x_pad, v.to(x.dtype), y_pad)
        return x[:, 0]

    def match_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """``[P, 2]`` (no match, match) logits of fused vectors."""
        return self.match(fused)

    def score_pairs(self, texts: Features, items: Features, chunk: int = 256) -> torch.Tensor:
        out = [
            self.match_logits(self.fuse(texts.rows(s, s + chunk), items.rows(s, s + chunk)))[:, 1]
            for s in range(0, len(texts), chunk)
        ]
        return torch.cat(out) if out else torch.empty(0)

    def score(self, texts: Features, items: Features) -> torch.Tensor:
        n_texts, n_items = len(texts), len(items)
        text_rows = torch.arange(n_texts).repeat_interleave(n_items)
        item_rows = torch.arange(n_items).repeat(n_texts)
        pairs = self.score_pairs(texts.select(text_rows), items.select(item_rows), chunk=len(text_rows) or 1)
        return pairs.view(n_texts, n_items)

    def pair_cost(self, texts: Features, items: Features) -> int:
        t, v = texts.tokens.shape[1] + 1, items.tokens.shape[1]
        return (t * (t + v) * self.heads + 8 * t * self.dim) * self.n_layers

    def options(self) -> dict:
        return {
            "dim": self.dim,
            "layers": self.n_layers,
            "heads": self.heads,
            "dropout": self.dropout,
            "k_test": self.k_test,
        }
