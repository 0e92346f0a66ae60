"""AVSE's dimension-wise regulariser between the views of an image (a Barlow-Twins-style cross-correlation).

The image embedding is ``V`` views of width ``D`` side by side (``V = image width / text width``). For two
views ``e_1, e_2`` ``[B, D]``, ``C = ẽ_1^T ẽ_2 / B`` and

    ``L = sum_k (C_kk - 1)^2 + offdiag * sum_{k != l} C_kl^2``,

summed over every pair of views. ``norm`` decides ``ẽ``:

- ``compat`` (default, the released code): each column l2-normalised over the batch. Then ``|C_kk| <= 1/B``,
  so the loss stays near ``D`` and its gradient is small, as in the released code.
- ``barlow``: each column standardised over the batch (mean 0, variance 1), as in Barlow Twins, so identical
  views give ``C_kk = 1`` and a zero on-diagonal term.

Both are unchanged by a positive scale shared by all embeddings (the trainer's whole-vector normalisation of
``[e_1; e_2]`` is one such scale, because each view is unit-norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import ClassVar

import torch

NORMS = ("compat", "barlow")


def cross_correlation(
    first: torch.Tensor, second: torch.Tensor, norm: str, eps: float = 1e-12
) -> torch.Tensor:
    """``[D, D]`` ``C = ẽ_1^T ẽ_2 / B`` of two ``[B, D]`` views, with ``ẽ`` as ``norm`` says."""
    if norm == "compat":
        a = first / (first.norm(dim=0, keepdim=True) + eps)
        b = second / (second.norm(dim=0, keepdim=True) + eps)
    else:
        a = (first - first.mean(0)) / (first.std(0, unbiased=False) + eps)
        b = (second - second.mean(0)) / (second.std(0, unbiased=False) + eps)
    return a.T @ b / len(first)


@dataclass
class ViewDecorrelationLoss:
    offdiag: float = 0.0051
    norm: str = "compat"
    needs: ClassVar[frozenset[str]] = frozenset({"embeds"})

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {self.norm!r}")
        if self.offdiag < 0:
            raise ValueError(f"offdiag must be >= 0, not {self.offdiag}")

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        image, text = outputs["image_embeds"], outputs["text_embeds"]
        width = text.shape[1]
        if image.shape[1] % width or image.shape[1] // width < 2:
            raise ValueError(
                f"view_decorrelation needs an image embedding of several views of the text's width {width}; "
                f"got width {image.shape[1]} (set model.options.views.count >= 2)"
            )
        views = image.float().reshape(len(image), -1, width).unbind(1)
        total = image.new_zeros((), dtype=torch.float32)
        for first, second in combinations(views, 2):
            c = cross_correlation(first, second, self.norm)
            on_diagonal = (c.diagonal() - 1).pow(2).sum()
            off_diagonal = c.pow(2).sum() - c.diagonal().pow(2).sum()
            total = total + on_diagonal + self.offdiag * off_diagonal
        return {"view_decorrelation": total}
