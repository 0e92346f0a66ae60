"""SGRAF's similarity heads (Diao et al., AAAI 2021): SGR (graph reasoning) and SAF (attention filtration).

Both score one (caption, image) pair from the caption's word features and the image's region (or patch)
features, each L2-normalised here (``l2n(x) = x / (||x|| + 1e-8)``):

1. Global vectors by self-attention: the image's over its regions (``VisualSA``, with batch norms), the
   caption's over its words (``TextSA``, none).
2. SCAN text-to-image attention: ``s_rw = LeakyReLU_0.1(v_r . t_w)``, normalised over the caption's words,
   ``beta_wr = softmax_r(lambda * s_rw)`` (lambda 9), attended context ``a_w = l2n(sum_r beta_wr v_r)``.
3. Similarity vectors: ``s_w = l2n(W_loc (a_w - t_w)^2 + b)`` per word, ``s_g = l2n(W_glo (v_g - t_g)^2 + b)``;
   the nodes ``[s_g, s_1 .. s_L]``.
4. SGR: three steps ``X <- ReLU(W_r softmax(Q K^T) X)``, then the global node. SAF: gates
   ``sigma(BN(w . x_n))``, L1-normalised over the nodes, then ``l2n(sum_n g_n x_n)``.
5. ``score = sigmoid(w_e . h + b_e)``, in (0, 1).

Scores are computed in the head's own precision (float32; float64 after ``.double()``), with autocast off
inside the head: under fp16 / bf16 training or evaluation the features are cast up on the way in.

The released code loops over captions in Python, slicing each to its length. Here a whole block of captions
is scored against a block of images at once, with masks that make padding invisible: padded words' scores
are zeroed before the word-wise norm, pooled over real words only, padded nodes are -inf keys in SGR's edge
softmax and zero gates in SAF. In eval mode every score depends on its own pair only, so any block shape gives
the same matrix. In train mode the batch norms see the batch, as in the reference: VisualSA's over the
batch's images; SAF's gate norm per caption, over that caption's images and real nodes, with the running
statistics updated once per caption in batch order (what the reference's per-caption loop does).

``n_regions`` is the size of VisualSA's region batch norm, which normalises over region *slots* (a quirk of
the reference that ties a trained head to one region count, 36 for bottom-up features); set it to the
token count of a patch tower to use one.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from vlret.models.features import Features
from vlret.models.heads.base import SimilarityHead

EPS = 1e-8


def _eps(dtype: torch.dtype) -> float:
    """SGRAF's 1e-8, or the smallest normal number of ``dtype`` where 1e-8 is not one (fp16: it would round
    to 0, and a zero vector would divide 0 by 0)."""
    return max(EPS, torch.finfo(dtype).tiny)


def l2n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / (||x|| + 1e-8)``: SGRAF's L2 normalisation (the epsilon outside the root)."""
    return x / (x.pow(2).sum(dim, keepdim=True).sqrt() + _eps(x.dtype))


def l1n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / (x.abs().sum(dim, keepdim=True) + _eps(x.dtype))


def _without_autocast(method):
    """Run a scoring method in the head's own precision (float32, or float64 for a ``.double()`` head), also
    inside an fp16 / bf16 autocast region: the normalisations and the softmax over lambda-scaled scores are
    where half precision loses a caption (a short caption padded in a block scored NaN under fp16)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        device = self.score_proj.weight.device.type
        with torch.autocast(device_type=device, enabled=False):
            return method(self, *args, **kwargs)

    return run


def _xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear layer initialised as SGRAF's: uniform in +-sqrt(6 / (in + out)), bias 0."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, -torch.inf), dim=-1)


class VisualSelfAttention(nn.Module):
    """The image's global vector: region weights from ``tanh(BN(W_l v_r)) * tanh(BN(W_g mean(v)))``."""

    def __init__(self, dim: int, n_regions: int, dropout: float):
        super().__init__()
        self.local, self.local_norm = _xavier_linear(dim, dim), nn.BatchNorm1d(n_regions)
        self.glob, self.glob_norm = _xavier_linear(dim, dim), nn.BatchNorm1d(dim)
        self.common = _xavier_linear(dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean = (regions * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        local = self.dropout(torch.tanh(self.local_norm(self.local(regions))))
        glob = self.dropout(torch.tanh(self.glob_norm(self.glob(mean))))
        weights = _masked_softmax(self.common(local * glob[:, None, :]).squeeze(-1), mask)
        return l2n((weights[..., None] * regions).sum(1))


class TextSelfAttention(nn.Module):
    """The caption's global vector: VisualSA's structure without batch norms, over the real words."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.local, self.glob, self.common = (
            _xavier_linear(dim, dim),
            _xavier_linear(dim, dim),
            _xavier_linear(dim, 1),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean = (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        local = self.dropout(torch.tanh(self.local(words)))
        glob = self.dropout(torch.tanh(self.glob(mean)))
        weights = _masked_softmax(self.common(local * glob[:, None, :]).squeeze(-1), mask)
        return l2n((weights[..., None] * words).sum(1))


class GraphReasoning(nn.Module):
    """One SGR step: ``X <- ReLU(W_r softmax(Q K^T) X)`` over the real nodes (no 1/sqrt(d) scaling)."""

    def __init__(self, sim_dim: int):
        super().__init__()
        self.query, self.key, self.out = (_xavier_linear(sim_dim, sim_dim) for _ in range(3))

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        edges = self.query(nodes) @ self.key(nodes).transpose(-1, -2)
        edges = _masked_softmax(edges, node_mask[..., None, :])
        return torch.relu(self.out(edges @ nodes))


def caption_batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SAF's one-channel batch norm of gate logits ``x`` ``[captions, images, nodes]``.

    Eval mode: the running statistics. Train mode: each caption normalised by the mean and (biased) variance
    of its own images x real nodes, and the running statistics updated once per caption in order, which is
    what the reference's loop over captions (one BatchNorm1d call each) computes."""
    if not norm.training:
        mean, var = norm.running_mean, norm.running_var
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    weights = mask[:, None, :].expand_as(x).to(x.dtype)
    count = weights.sum((1, 2))
    mean = (x * weights).sum((1, 2)) / count
    var = ((x - mean[:, None, None]).pow(2) * weights).sum((1, 2)) / count
    out = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps) * norm.weight + norm.bias
    with torch.no_grad():
        m, n = norm.momentum, len(x)
        decay = (1 - m) ** torch.arange(n - 1, -1, -1, dtype=x.dtype, device=x.device)
        unbiased = var * count / (count - 1).clamp(min=1)
        norm.running_mean.mul_((1 - m) ** n).add_((m * decay * mean.detach()).sum())
        norm.running_var.mul_((1 - m) ** n).add_((m * decay * unbiased.detach()).sum())
        norm.num_batches_tracked.add_(n)
    return out


class SimilarityGraphHead(SimilarityHead):
    """What SGR and SAF share: global self-attention, SCAN attention, similarity vectors, the final score.
    Subclasses turn the nodes ``[..., L + 1, sim_dim]`` into one vector per pair (:meth:`aggregate`)."""

    uses_tokens = True

    def __init__(
        self,
        embed_dim: int = 1024,
        sim_dim: int = 256,
        attn_lambda: float = 9.0,
        n_regions: int = 36,
        dropout: float = 0.4,
    ):
        super().__init__()
        for key, value in (("embed_dim", embed_dim), ("sim_dim", sim_dim), ("n_regions", n_regions)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, not {value}")
        self.embed_dim, self.sim_dim, self.n_regions = embed_dim, sim_dim, n_regions
        self.attn_lambda, self.dropout = attn_lambda, dropout
        self.visual_attention = VisualSelfAttention(embed_dim, n_regions, dropout)
        self.text_attention = TextSelfAttention(embed_dim, dropout)
        self.local_proj = _xavier_linear(embed_dim, sim_dim)
        self.global_proj = _xavier_linear(embed_dim, sim_dim)
        self.score_proj = _xavier_linear(sim_dim, 1)

    # ----- the pieces -----------------------------------------------------------------------------------
    def _inputs(self, features: Features, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        if features.tokens is None:
            raise ValueError(
                f"the {self.name} head needs {side} tokens; this model's {side} encoder returns none"
            )
        tokens = features.tokens.to(self.score_proj.weight.dtype)
        if tokens.shape[-1] != self.embed_dim:
            raise ValueError(
                f"the {self.name} head takes {self.embed_dim}-d {side} tokens (embed_dim), got {tokens.shape[-1]}-d"
            )
        mask = features.mask
        mask = (
            torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            if mask is None
            else mask.bool()
        )
        if side == "text" and len(mask) and not bool(mask.any(dim=1).all()):
            empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"the {self.name} head scores a caption by its words, and captions {empty[:5]} of this block "
                "have none (empty after tokenization); drop them from the data"
            )
        if side == "item" and tokens.shape[1] != self.n_regions:
            raise ValueError(
                f"the {self.name} head's region batch norm has {self.n_regions} slots (n_regions), but items "
                f"have {tokens.shape[1]} regions; set the head's n_regions to the features' count"
            )
        return l2n(tokens) * mask[..., None], mask

    def attend(self, words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """SCAN text-to-image attention: each word's attended region context, broadcast over leading dims.

        ``words [..., L, D]`` (mask ``[..., L]``) and ``regions [..., R, D]`` -> ``[..., L, D]``."""
        scores = F.leaky_relu(regions @ words.transpose(-1, -2), 0.1)  # [..., R, L]
        scores = scores * word_mask[..., None, :]  # padded words take no part in the norm over words
        scores = l2n(scores, dim=-1)
        beta = torch.softmax(self.attn_lambda * scores.transpose(-1, -2), dim=-1)  # [..., L, R]
        return l2n(beta @ regions)

    def nodes(
        self,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        regions: torch.Tensor,
        text_global: torch.Tensor,
        item_global: torch.Tensor,
    ) -> torch.Tensor:
        """``[..., L + 1, sim_dim]``: the global similarity vector, then one per word (globals ``[..., D]``)."""
        context = self.attend(words, word_mask, regions)
        local = l2n(self.local_proj((context - words).pow(2)))
        glob = l2n(self.global_proj((item_global - text_global).pow(2)))
        return torch.cat([glob.unsqueeze(-2), local], dim=-2)

    def aggregate(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """One ``sim_dim`` vector per pair from its nodes; ``node_mask`` ``[captions, 1 or images, L + 1]``."""
        raise NotImplementedError

    # ----- the head interface ---------------------------------------------------------------------------
    @_without_autocast
    def score(self, texts: Features, items: Features) -> torch.Tensor:
        words, word_mask = self._inputs(texts, "text")
        regions, region_mask = self._inputs(items, "item")
        real = int(word_mask.sum(1).max()) if len(word_mask) else 0
        words, word_mask = words[:, :real], word_mask[:, :real]  # padding every caption of the block shares
        text_global = self.text_attention(words, word_mask)  # [Nc, D]
        item_global = self.visual_attention(regions, region_mask)  # [Ni, D]
        context = self._block_context(words, word_mask, regions)  # [Ni, Nc, L, D]
        local = l2n(self.local_proj((context - words[None]).pow(2)))
        glob = l2n(self.global_proj((item_global[:, None] - text_global[None]).pow(2)))
        nodes = torch.cat([glob.unsqueeze(-2), local], dim=-2)  # [Ni, Nc, L + 1, S]
        node_mask = F.pad(word_mask, (1, 0), value=True)
        vectors = self.aggregate(nodes.transpose(0, 1), node_mask[:, None, :])  # [Nc, Ni, S]
        return torch.sigmoid(self.score_proj(vectors)).squeeze(-1)

    def _block_context(
        self, words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`attend` for every (image, caption) pair of a block, laid out ``[Ni, Nc, L, D]`` so that both
        products are single large matrix products (broadcast matmuls would copy the regions per caption)."""
        (n_items, n_regions, dim), (n_texts, length) = regions.shape, words.shape[:2]
        scores = (regions.reshape(-1, dim) @ words.reshape(-1, dim).T).view(
            n_items, n_regions, n_texts, length
        )
        scores = F.leaky_relu(scores, 0.1) * word_mask
        scores = l2n(scores, dim=-1)  # over each caption's words
        beta = torch.softmax(self.attn_lambda * scores.permute(0, 2, 3, 1), dim=-1)  # [Ni, Nc, L, R]
        context = torch.bmm(beta.reshape(n_items, n_texts * length, n_regions), regions)
        return l2n(context.view(n_items, n_texts, length, dim))

    @_without_autocast
    def score_pairs(self, texts: Features, items: Features, chunk: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), chunk):
            stop = min(start + chunk, len(texts))
            words, word_mask = self._inputs(texts.rows(start, stop), "text")
            regions, region_mask = self._inputs(items.rows(start, stop), "item")
            text_global = self.text_attention(words, word_mask)
            item_global = self.visual_attention(regions, region_mask)
            nodes = self.nodes(words, word_mask, regions, text_global, item_global)
            node_mask = F.pad(word_mask, (1, 0), value=True)
            vectors = self.aggregate(nodes[:, None], node_mask[:, None, :])[:, 0]
            out.append(torch.sigmoid(self.score_proj(vectors)).squeeze(-1))
        return torch.cat(out) if out else torch.empty(0)

    def pair_cost(self, texts: Features, items: Features) -> int:
        length, regions = texts.tokens.shape[1], items.tokens.shape[1]
        # scores and attention (L x R, twice), context and its difference (L x D, three), nodes, SGR's edges
        return length * (2 * regions + 3 * self.embed_dim + 3 * self.sim_dim) + (length + 1) ** 2

    def options(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "sim_dim": self.sim_dim,
            "attn_lambda": self.attn_lambda,
            "n_regions": self.n_regions,
            "dropout": self.dropout,
        }


class SGRHead(SimilarityGraphHead):
    """Similarity graph reasoning: ``steps`` rounds of attention over the nodes; the global node scores."""

    name = "sgr"

    def __init__(self, *args, steps: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        self.steps = steps
        self.reasoning = nn.ModuleList(GraphReasoning(self.sim_dim) for _ in range(steps))

    def aggregate(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        for step in self.reasoning:
            nodes = step(nodes, node_mask)
        return nodes[..., 0, :]

    def options(self) -> dict:
        return {**super().options(), "steps": self.steps}


class SAFHead(SimilarityGraphHead):
    """Similarity attention filtration: gated (sigmoid, batch-normed, L1-normalised) mean of the nodes."""

    name = "saf"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = _xavier_linear(self.sim_dim, 1)
        self.gate_norm = nn.BatchNorm1d(1)

    def aggregate(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        mask = node_mask.expand(nodes.shape[:-1])
        logits = caption_batch_norm(self.gate_norm, self.gate(nodes).squeeze(-1), mask[:, 0])
        gates = l1n(torch.sigmoid(logits) * mask)
        return l2n((gates[..., None] * nodes).sum(-2))
