"""A small ViT image tower, trained from scratch: the CPU stand-in for AVSE's ViT-B/16.

Patches of ``patch_size`` pixels are embedded, a ``[CLS]`` token and learnt positions are added, and
``layers`` pre-norm transformer blocks with a final LayerNorm run over them. The forward pass splits into
:meth:`input_tokens` and :meth:`run_blocks`, so radial-bias views (:mod:`vlret.models.avse`) can sample the
input tokens and run the blocks once per view.
"""

from __future__ import annotations

import torch
from torch import nn

from vlret.data.transforms import ImageTransform
from vlret.models.backbones.base import ImageTower
from vlret.models.base import Features
from vlret.models.tiny import TinyConfig, _pre_norm_transformer


class TinyViTTower(ImageTower):
    """``[CLS]`` + patch tokens of a small ViT; the global vector is the final ``[CLS]`` state."""

    name = "tiny-vit"
    pretrained = False
    has_cls = True
    samples_inputs = True  # views sample the input tokens and run the blocks per view

    def __init__(
        self, image_size: int = 64, patch_size: int = 8, width: int = 128, layers: int = 4, heads: int = 4
    ):
        super().__init__()
        cfg = TinyConfig(
            arch="tiny-vit",
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            embed_dim=width,
            image_layers=layers,
            heads=heads,
        )
        self.settings = {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            "heads": heads,
        }
        self.width = width
        self.transform = ImageTransform(
            size=image_size, crop=image_size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash"
        )
        n_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, width) * 0.02)
        self.blocks = _pre_norm_transformer(cfg, layers)
        self.norm = nn.LayerNorm(width)

    def input_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, width]``: the ``[CLS]`` token and the patch embeddings, positions added."""
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos

    def run_blocks(self, tokens: torch.Tensor) -> Features:
        """The transformer over any subset of input tokens (``[CLS]`` first)."""
        x = self.norm(self.blocks(tokens))
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return Features(x[:, 0], x, mask)

    def forward(self, pixels: torch.Tensor) -> Features:
        return self.run_blocks(self.input_tokens(pixels))

    def describe(self) -> dict:
        return {"name": self.name, **self.settings}
