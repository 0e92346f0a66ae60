"""Vision transformers from transformers (ViT, Swin and kin) as image towers, by hub id or folder.

The tokens are the last hidden states (ViT: the ``[CLS]`` token and the patches; Swin: the last stage's
patches). The global vector is ViT's final ``[CLS]`` state, or the model's pooled output (Swin: the mean of
its patches). Preprocessing comes from the checkpoint's image-processor configuration (size, mean, std,
resampling), applied by vlret's own transform: the image is resized to the model's square input, as the
ViT image processor does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from vlret.data.transforms import ImageTransform
from vlret.errors import ConfigError
from vlret.models.backbones.base import ImageTower
from vlret.models.base import Features

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's numbers


def transform_from_processor(source: str | Path) -> ImageTransform:
    """vlret's transform for a checkpoint's image processor (resize to a square, scale, normalise)."""
    processor = AutoImageProcessor.from_pretrained(str(source), use_fast=False)
    size = processor.size
    side = size.get("height") or size.get("shortest_edge")
    if side is None or ("width" in size and size["width"] != side):
        raise ConfigError(f"{source}: only square image inputs are supported (image processor size {size})")
    resample = _RESAMPLE_NAMES.get(int(getattr(processor, "resample", 2)), "bilinear")
    return ImageTransform(
        side, side, tuple(processor.image_mean), tuple(processor.image_std), resample, "squash"
    )


class HFVisionTower(ImageTower):
    """A transformers vision model (``AutoModel``) as an image tower; see the module docstring."""

    name = "hf-vision"

    def __init__(self, source: str | Path, weights: bool = True):
        super().__init__()
        self.source = str(source)
        if weights:
            self.encoder = AutoModel.from_pretrained(self.source)
        else:
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(self.source))
        config = self.encoder.config
        self.width = int(getattr(config, "hidden_size", 0) or config.num_features)
        self.transform = transform_from_processor(self.source)
        self.use_cls = config.model_type == "vit"

    def forward(self, pixels: torch.Tensor) -> Features:
        out = self.encoder(pixel_values=pixels)
        tokens = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        if self.use_cls or pooled is None:
            pooled = tokens[:, 0] if self.use_cls else tokens.mean(1)
        return Features(pooled.reshape(len(tokens), -1), tokens, None)

    def save_files(self, folder: Path) -> None:
        target = folder / "image_tower"
        self.encoder.config.save_pretrained(target)
        AutoImageProcessor.from_pretrained(self.source, use_fast=False).save_pretrained(target)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source}
