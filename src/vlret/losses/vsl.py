"""VSL, the visual semantic loss (Zhang et al., ICME 2023): ask each image's ranking of the batch's captions
to agree with how close the images' annotations are.

With ``S`` the ``[B images, B captions]`` batch score matrix (positives on the diagonal) and ``C`` a
``[B, B]`` target (by default :meth:`CaptionSemanticTargets.visual`: mean TF-IDF cosine between the
captions of two images), both are turned into soft ranks and compared entry by entry:

``VSL = scale * (1 - 1/B^2 sum_{j,k} min(R_S[j,k], R_C[j,k]) / max(R_S[j,k], R_C[j,k]))``

with ``scale`` 10 (hard-coded in the released code). Only ``R_S`` carries gradient. The loss reads nothing
but a square score matrix, so it trains SGRAF heads, cosine dual encoders and composed models alike; its
temperature assumes score gaps of order 0.01-0.1 (rescale it for logit-scaled scores).

Soft rank (``soft_rank``): ``R[j, k] = 1 + sum_{i != k} sigma_tau(O[j, i] - M[j, k])`` with
``sigma_tau(x) = sigmoid(clip(x / tau, -clamp, clamp))``, 1 = the largest, ties half each. ``mode="row"``
compares against the row itself (``O = M``), the intended per-row rank. ``mode="reference"`` reproduces the
released code, which compares ``M[j, k]`` against column ``j`` (``O = M^T``): the two agree for symmetric
matrices only, and the published numbers were made with the reference form, so it is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from vlret.data.records import RetrievalDataset
from vlret.losses.base import batch_scores, require_number
from vlret.losses.caption_targets import CaptionSemanticTargets

RANK_MODES = ("reference", "row")
TARGETS = ("visual", "textual")


def soft_rank(
    matrix: torch.Tensor,
    temperature: float = 1e-3,
    mode: str = "reference",
    clamp: float = 50.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """Soft descending ranks of each row's entries (see the module docstring); ``[B, B]`` in, ``[B, B]`` out.

    Memory is ``B x B x chunk`` (all ``B`` when ``chunk`` is None) for the pairwise comparisons."""
    if mode not in RANK_MODES:
        raise ValueError(f"rank mode must be one of {RANK_MODES}, not {mode!r}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"soft_rank takes a square matrix, not shape {tuple(matrix.shape)}")
    others = matrix.T if mode == "reference" else matrix  # others[j, i]: what entry (j, k) is compared with
    size = len(matrix)
    step = chunk or size
    ranks = torch.ones_like(matrix)
    for start in range(0, size, step):
        block = others[:, start : start + step]  # [B, chunk]
        gaps = (block[:, None, :] - matrix[:, :, None]) / temperature  # [j, k, i]
        ranks = ranks + torch.sigmoid(gaps.clamp(-clamp, clamp)).sum(2)
    # take back the i = k comparison, which the sum above included
    self_gap = (others - matrix) / temperature
    return ranks - torch.sigmoid(self_gap.clamp(-clamp, clamp))


def rank_agreement_loss(ranks_a: torch.Tensor, ranks_b: torch.Tensor) -> torch.Tensor:
    """``1 - mean(min / max)`` of two rank matrices: 0 when they agree everywhere."""
    return 1 - (torch.minimum(ranks_a, ranks_b) / torch.maximum(ranks_a, ranks_b)).mean()


@dataclass
class VisualSemanticLoss:
    """VSL as a loss term of the recipe (``losses: {vsl: {...}}``); :meth:`fit` builds its targets from the
    training split before the first step."""

    scale: float = 10.0  # the released code's hard-coded weight
    temperature: float = 1e-3
    clamp: float = 50.0
    rank_mode: str = "reference"  # or "row"
    target: str = "visual"  # or "textual": the batch's own captions (the TSL ablation)
    chunk: int | None = None  # comparisons per block (memory B x B x chunk); None: all at once
    needs: ClassVar[frozenset[str]] = frozenset({"scores"})
    targets: CaptionSemanticTargets | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rank_mode not in RANK_MODES:
            raise ValueError(f"rank_mode must be one of {RANK_MODES}, not {self.rank_mode!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {self.target!r}")
        require_number("scale", self.scale)
        require_number("temperature", self.temperature, strict=True)
        require_number("clamp", self.clamp, strict=True)
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 or null, not {self.chunk}")

    def fit(self, train: RetrievalDataset) -> None:
        """Build the TF-IDF targets from the training split's captions."""
        captions = [c.text for c in train.captions]
        self.targets = CaptionSemanticTargets(captions, train.caption_to_item, len(train.items))

    def compare(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``scale * (1 - mean(min/max))`` of the soft ranks of ``scores`` and ``target`` (no gradient)."""
        ranks = soft_rank(scores, self.temperature, self.rank_mode, self.clamp, self.chunk)
        with torch.no_grad():
            target_ranks = soft_rank(
                target.to(scores), self.temperature, self.rank_mode, self.clamp, self.chunk
            )
        return self.scale * rank_agreement_loss(ranks, target_ranks)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        if self.targets is None:
            raise RuntimeError("VisualSemanticLoss.fit(train_split) must run before the loss is used")
        if self.target == "visual":
            target = self.targets.visual(outputs["item_ids"])
        else:
            target = self.targets.textual(outputs["caption_ids"])
        term = "vsl" if self.target == "visual" else "tsl"
        return {term: self.compare(batch_scores(outputs).float(), target)}


@dataclass
class TextualSemanticLoss(VisualSemanticLoss):
    """The TSL ablation (``losses: {tsl: {...}}``): VSL against the batch's own caption-caption TF-IDF cosines,
    so that a recipe can sum hinge + VSL + TSL."""

    target: str = "textual"
