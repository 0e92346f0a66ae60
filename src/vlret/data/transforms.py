"""CLIP-style image preprocessing with Pillow and numpy, matching the torchvision reference pixel for pixel.

The reference (OpenAI CLIP, open_clip) is ``Resize(size, BICUBIC)`` on the shortest side, ``CenterCrop(crop)``,
RGB, ``ToTensor`` and ``Normalize(mean, std)`` applied to a PIL image. torchvision implements the PIL path of
``Resize`` with ``PIL.Image.resize``, computes the long side as ``int(size * long / short)`` and places the crop
at ``int(round((h - crop) / 2))``; this module does the same so that no torchvision install is needed.
(Hugging Face's PIL image processor places the crop at ``(h - crop) // 2``, one pixel off when the difference
is odd.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def resized_shortest_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the shorter side ``size`` and the longer side truncated as torchvision does."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centred ``crop`` x ``crop`` box, rounded as torchvision rounds."""
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


@dataclass(frozen=True)
class ImageTransform:
    """Resize (shortest side, or ``squash`` to a square), centre crop, scale to [0, 1] and normalise.

    Calling it on a PIL image returns a float32 array ``[3, crop, crop]``.
    """

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"
    resize_mode: str = "shortest"  # or "squash": resize both sides to `size`, aspect ratio not kept

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, not {self.resample!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', not {self.resize_mode!r}")
        if self.crop > self.size:
            raise ValueError(f"crop ({self.crop}) cannot exceed size ({self.size})")

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometric part: the RGB image that will be normalised."""
        if self.resize_mode == "squash":
            new_size = (self.size, self.size)
        else:
            new_size = resized_shortest_side(image.width, image.height, self.size)
        if new_size != image.size:
            image = image.resize(new_size, _RESAMPLE[self.resample])
        if image.size != (self.crop, self.crop):
            image = image.crop(center_crop_box(image.width, image.height, self.crop))
        return image.convert("RGB")

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(self.resize_and_crop(image), dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageTransform:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)
