"""A small ViT image tower, trained from scratch: the CPU stand-in for AVSE's ViT-B/16.

The trunk of the built-in ``tiny-vit`` model (:class:`vlret.models.tiny.ViTTrunk`) without its projection:
the composed model's projection maps it into the joint space. Its pass splits into :meth:`input_tokens` and
:meth:`run_blocks`, so radial-bias views (:mod:`vlret.models.avse`) can sample the input tokens and run the
blocks once per view.
"""

from __future__ import annotations

import torch

from vlret.data.transforms import ImageTransform
from vlret.models.backbones.base import ImageTower
from vlret.models.base import Features
from vlret.models.tiny import TinyConfig, ViTTrunk


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
        self.trunk = ViTTrunk(cfg)

    def input_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, width]``: the ``[CLS]`` token and the patch embeddings, positions added."""
        return self.trunk.input_tokens(pixels)

    def run_blocks(self, tokens: torch.Tensor) -> Features:
        """The transformer over any subset of input tokens (``[CLS]`` first)."""
        x = self.trunk.run_blocks(tokens)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return Features(x[:, 0], x, mask)

    def forward(self, pixels: torch.Tensor) -> Features:
        return self.run_blocks(self.input_tokens(pixels))

    def describe(self) -> dict:
        return {"name": self.name, **self.settings}
