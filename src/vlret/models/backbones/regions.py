"""Precomputed region features as an image tower (SCAN / SGRAF / VSL's bottom-up-attention input).

The tower takes ``[B, R, D]`` region features (see :mod:`vlret.data.regions`) and has no weights of its
own: the regions are its tokens and their mean is its global vector. A composed model's projection then
plays SGRAF's image encoder, ``v_r = W f_r + b`` (2048 -> 1024), normalised by the head.
"""

from __future__ import annotations

import torch

from vlret.data.regions import RegionInput
from vlret.models.backbones.base import ImageTower
from vlret.models.base import Features


class RegionTower(ImageTower):
    """Region features in, regions as tokens and their mean as the global vector out."""

    name = "regions"
    input_kind = "regions"
    pretrained = False

    def __init__(self, dim: int = 2048):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be at least 1, not {dim}")
        self.width = dim
        self.transform = RegionInput(dim)

    def forward(self, regions: torch.Tensor) -> Features:
        if regions.ndim != 3 or regions.shape[2] != self.width:
            raise ValueError(
                f"region features of shape {tuple(regions.shape)}; this tower takes [batch, regions, {self.width}] "
                "(set image_options: {dim: ...} to the features' width)"
            )
        regions = regions.float()
        mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
        return Features(regions.mean(dim=1), regions, mask)

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.width}
