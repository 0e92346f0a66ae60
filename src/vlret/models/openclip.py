"""open_clip's model zoo through vlret's factory: ``openclip:<architecture>/<pretrained tag>``.

``create_model("openclip:ViT-B-32/laion2b_s34b_b79k")`` builds the architecture with open_clip and loads the
tagged weights (open_clip downloads them, or reads its cache); ``openclip:ViT-B-32/`` (no tag) builds it
untrained. Needs the optional extra: ``pip install "vlret[openclip]"``, which brings open_clip_torch and,
through it, torchvision and timm (kept out of vlret's core dependencies). Preprocessing comes from the
model's own ``preprocess_cfg``, applied by vlret's transform. Saved like any vlret model: a folder with the
architecture, the tag and the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlret.data.transforms import ImageTransform
from vlret.errors import ConfigError
from vlret.models.base import Features, RetrievalModel
from vlret.models.files import MODEL_CONFIG_FILE

PREFIX = "openclip:"


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise ConfigError(
            "openclip: models need the optional extra: pip install 'vlret[openclip]' (open_clip_torch; "
            "it brings torchvision and timm, and from PyPI on Linux the CUDA build of torch, several GB)"
        ) from None
    return open_clip


def parse_name(name: str) -> tuple[str, str | None]:
    """``openclip:ARCH/TAG`` -> (ARCH, TAG or None)."""
    arch, _, tag = name.removeprefix(PREFIX).partition("/")
    if not arch:
        raise ConfigError(
            f"{name!r}: expected openclip:<architecture>/<pretrained tag>, e.g. openclip:ViT-B-32/openai"
        )
    return arch, tag or None


def _transform(model) -> ImageTransform:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    side = size if isinstance(size, int) else size[0]
    mode = "squash" if cfg.get("resize_mode") == "squash" else "shortest"
    return ImageTransform(
        side,
        side,
        tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        cfg.get("interpolation", "bicubic"),
        mode,
    )


class OpenCLIPModel(RetrievalModel):
    """An open_clip CLIP model as a vlret dual encoder (global embeddings; no tokens)."""

    def __init__(self, arch: str, tag: str | None):
        super().__init__()
        open_clip = _open_clip()
        self.arch, self.tag = arch, tag
        self.name = f"{PREFIX}{arch}/{tag or ''}"
        self.clip = open_clip.create_model(arch, pretrained=tag)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.image_transform = _transform(self.clip)
        self.backbone_prefixes = ("clip.",)
        if tag:
            self.origin = f"pretrained:{arch}/{tag}"

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts))
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def encode_images(self, pixels: torch.Tensor) -> Features:
        return Features(self.clip.encode_image(pixels))

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        return Features(self.clip.encode_text(batch["input_ids"]))

    def identity(self) -> dict:
        return {**super().identity(), "arch": self.arch, "tag": self.tag}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "openclip", "arch": self.arch, "tag": self.tag, "head": self.save_head(folder)}
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(self.tower_state_dict(), folder / "model.safetensors")

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> OpenCLIPModel:
        folder = Path(folder)
        model = cls(meta["arch"], None)  # the architecture only: the saved weights follow
        model.tag = meta.get("tag")
        model.load_head(folder, meta)
        model.load_tower_state_dict(load_file(folder / "model.safetensors"))
        return model
