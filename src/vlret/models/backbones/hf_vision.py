"""Vision transformers from transformers (ViT, Swin and kin) as image towers, by hub id or folder.

The tokens are the last hidden states (ViT: the ``[CLS]`` token and the patches; Swin: the last stage's
patches). The global vector is ViT's final ``[CLS]`` state, or the model's pooled output (Swin: the mean of
its patches). Preprocessing comes from the checkpoint's image-processor configuration (size, mean, std,
resampling), applied by vlret's own transform: the image is resized to the model's square input, as the
ViT image processor does.

A ViT's forward pass also splits into :meth:`HFVisionTower.input_tokens` (patch embedding with
interpolated positions, ``[CLS]`` first) and :meth:`HFVisionTower.run_blocks` (the encoder blocks without the
final LayerNorm, as AVSE uses them), so radial-bias views can sample its input tokens. Other models (Swin)
are sampled on their final token grid instead.
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


def transform_from_processor(source: str | Path, image_size: int | None = None) -> ImageTransform:
    """vlret's transform for a checkpoint's image processor (resize to a square, scale, normalise);
    ``image_size`` replaces the processor's side (AVSE feeds its 224-px ViT 256-px images)."""
    processor = AutoImageProcessor.from_pretrained(str(source), use_fast=False)
    size = processor.size
    side = size.get("height") or size.get("shortest_edge")
    if side is None or ("width" in size and size["width"] != side):
        raise ConfigError(f"{source}: only square image inputs are supported (image processor size {size})")
    side = image_size or side
    resample = _RESAMPLE_NAMES.get(int(getattr(processor, "resample", 2)), "bilinear")
    return ImageTransform(
        side, side, tuple(processor.image_mean), tuple(processor.image_std), resample, "squash"
    )


class HFVisionTower(ImageTower):
    """A transformers vision model (``AutoModel``) as an image tower; see the module docstring."""

    name = "hf-vision"

    def __init__(self, source: str | Path, weights: bool = True, image_size: int | None = None):
        super().__init__()
        if image_size is not None and (int(image_size) != image_size or image_size < 1):
            raise ConfigError(f"image_options.image_size must be a positive integer, not {image_size!r}")
        self.source, self.image_size = str(source), image_size
        if weights:
            self.encoder = AutoModel.from_pretrained(self.source)
        else:
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(self.source))
        config = self.encoder.config
        self.width = int(getattr(config, "hidden_size", 0) or config.num_features)
        self.transform = transform_from_processor(self.source, image_size)
        self.use_cls = config.model_type == "vit"
        self.has_cls = self.use_cls
        self.samples_inputs = self.use_cls  # ViTs can run any subset of their input tokens

    def input_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """A ViT's ``[B, 1 + N, width]`` input tokens (positions interpolated to the input size)."""
        return self.encoder.embeddings(pixels, interpolate_pos_encoding=True)

    def run_blocks(self, tokens: torch.Tensor) -> Features:
        """A ViT's encoder blocks over any subset of input tokens; the raw last hidden state (no final
        LayerNorm), ``[CLS]`` first."""
        if hasattr(self.encoder, "encoder"):  # transformers before 5 keep the blocks in a ViTEncoder
            hidden = self.encoder.encoder(tokens).last_hidden_state
        else:
            hidden = tokens
            for layer in self.encoder.layers:
                hidden = layer(hidden, None)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return Features(hidden[:, 0], hidden, mask)

    def forward(self, pixels: torch.Tensor) -> Features:
        if self.use_cls:  # a ViT at another input size than it was trained at interpolates its positions
            out = self.encoder(pixel_values=pixels, interpolate_pos_encoding=True)
        else:
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
        described = {"name": self.name, "source": self.source}
        if self.image_size is not None:
            described["image_size"] = self.image_size
        return described
