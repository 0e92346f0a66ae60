"""Video retrieval on any image model: encode sampled frames with its image tower, then pool over time.

:class:`VideoModel` wraps a :class:`~vlret.models.base.RetrievalModel` (any the registry builds: tiny,
composed, ``hf:``, ``openclip:``, a saved folder). A clip is ``frames`` frames (``sampling_rule: centres``,
the centres of equal segments; or ``clip4clip``, one a second picked as CLIP4Clip picks them, a short clip
padded with masked frames; see :mod:`vlret.data.video`), each encoded by the wrapped model's image tower and
L2-normalised, then pooled over the real frames:

- ``pooling: mean``: CLIP4Clip's *meanP*, the average of the frame embeddings; it has no parameters and
  cannot tell a clip from the same clip played backwards.
- ``pooling: transformer``: CLIP4Clip's *seqTransf*, a small transformer over the frame embeddings with
  learnt frame positions, added back to them (residually) before the average. Its output projection starts
  at zero, so an untrained temporal model scores exactly like meanP and training only adds what order tells.

Texts go through the wrapped model unchanged. An image given to :meth:`VideoModel.encode_images` as
``[B, 3, H, W]`` is a one-frame clip, so image queries and mixed galleries work. Videos are scored by the
global vectors (the cosine head); token heads are refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vlret.data.video import MAX_FRAMES, FrameSampling
from vlret.errors import ConfigError
from vlret.models.base import Features, RetrievalModel
from vlret.models.files import MODEL_CONFIG_FILE
from vlret.schema import build_dataclass

POOLINGS = ("mean", "transformer")
FRAME_MODEL_FOLDER = "frame_model"
TEMPORAL_WEIGHTS_FILE = "temporal.safetensors"


SAMPLINGS = ("centres", "clip4clip")


@dataclass
class VideoConfig:
    frames: int = 8  # frames per clip (clip4clip: at most, the rest masked)
    pooling: str = "mean"  # "mean" (meanP) or "transformer" (seqTransf)
    layers: int = 2  # temporal transformer blocks
    heads: int = 4
    # "centres": the centres of `frames` equal segments; "clip4clip": one frame a second, `frames` of them
    # picked by CLIP4Clip's truncated linspace, shorter clips padded and masked
    sampling_rule: str = "centres"
    # clip4clip: only frames at or before this second (DiDeMo's released loader reads seconds 0 to 31)
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.video.pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if self.sampling_rule not in SAMPLINGS:
            raise ConfigError(
                f"model.video.sampling_rule must be one of {', '.join(SAMPLINGS)}, not {self.sampling_rule!r}"
            )
        if self.max_seconds is not None and self.sampling_rule != "clip4clip":
            raise ConfigError("model.video.max_seconds goes with sampling_rule: clip4clip")
        if self.frames > MAX_FRAMES:
            raise ConfigError(f"model.video.frames must be at most {MAX_FRAMES}, not {self.frames}")
        for name in ("frames", "layers", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.video.{name} must be at least 1, not {getattr(self, name)}")

    def as_dict(self) -> dict:
        """The settings as saved and as the model's identity; ``max_seconds`` only when set, so the
        identities (and cache keys) of models made before it stay as they were."""
        fields = asdict(self)
        if fields["max_seconds"] is None:
            del fields["max_seconds"]
        return fields

    @property
    def sampling(self) -> FrameSampling:
        if self.sampling_rule == "clip4clip":
            return FrameSampling.clip4clip(self.frames, self.max_seconds)
        return FrameSampling(frames=self.frames)


class TemporalTransformer(nn.Module):
    """Frame embeddings ``[B, F, D]`` -> the same plus a learnt function of the whole sequence (zero at init)."""

    def __init__(self, dim: int, frames: int, layers: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.video.heads ({heads}) must divide the embedding size ({dim})")
        self.positions = nn.Parameter(torch.randn(frames, dim) * 0.02)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)  # starts as meanP exactly
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``valid`` ``[B, F]`` marks real frames: padded ones are not attended to (CLIP4Clip's mask)."""
        count = frames.shape[1]
        if count > len(self.positions):
            raise ValueError(
                f"{count} frames, but the temporal transformer has positions for {len(self.positions)}"
            )
        padding = None if valid is None else ~valid
        return frames + self.out(self.blocks(frames + self.positions[:count], src_key_padding_mask=padding))


class VideoModel(RetrievalModel):
    """A clip encoder built on an image model's tower (see the module docstring)."""

    input_kind = "frames"

    def __init__(self, frame_model: RetrievalModel, config: VideoConfig):
        super().__init__()
        if frame_model.input_kind != "pixels":
            raise ConfigError(
                f"model.video: {frame_model.name} reads {frame_model.input_kind}; video needs a pixel image tower"
            )
        if frame_model.head.uses_tokens:
            raise ConfigError(
                f"model.video: the {frame_model.head.describe().get('name')} head reads tokens; "
                "videos are scored by their pooled vector (leave model.head unset)"
            )
        self.frame_model = frame_model
        self.config = config
        self.name = f"video:{frame_model.name}"
        self.image_transform = frame_model.image_transform
        self.backbone_prefixes = tuple(f"frame_model.{p}" for p in frame_model.backbone_prefixes)
        self.origin = frame_model.origin
        self.temporal: TemporalTransformer | None = None
        if config.pooling == "transformer":
            dim = self._embed_dim()
            self.temporal = TemporalTransformer(dim, config.frames, config.layers, config.heads)

    def _embed_dim(self) -> int:
        with torch.no_grad():
            probe = self.frame_model.encode_texts(self.frame_model.tokenize(["a"]))
        return probe.embeds.shape[-1]

    def set_head(self, head: nn.Module) -> None:
        if getattr(head, "uses_tokens", False):
            raise ConfigError(
                "model.video: videos are scored by their pooled vector; token heads are refused"
            )
        super().set_head(head)

    @property
    def sampling(self) -> FrameSampling:
        """How frames are taken from each clip."""
        return self.config.sampling

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.frame_model.logit_scale

    def identity(self) -> dict:
        return {**super().identity(), "video": self.config.as_dict(), "frames": self.frame_model.identity()}

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.frame_model.tokenize(texts)

    def unknown_query_words(self, text: str) -> list[str]:
        return self.frame_model.unknown_query_words(text)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        return Features(self.frame_model.encode_texts(batch).embeds)

    def encode_frames(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised frame embeddings ``[B, F, D]`` of clips ``[B, F, 3, H, W]``, after the temporal model,
        and which frames are real ``[B, F]`` (a padded frame is all NaN, see
        :func:`~vlret.data.video.stack_clip`; it is encoded as zeros, as CLIP4Clip's are, then masked)."""
        batch, count = pixels.shape[:2]
        valid = ~torch.isnan(pixels.flatten(2)).all(dim=-1)
        pixels = torch.nan_to_num(pixels, nan=0.0)
        frames = self.frame_model.encode_images(pixels.flatten(0, 1)).embeds
        frames = F.normalize(frames.float(), dim=-1).view(batch, count, -1)
        padded = not bool(valid.all())
        if self.temporal is not None:
            frames = self.temporal(frames, valid if padded else None)
        return frames, valid

    def encode_images(self, pixels: torch.Tensor) -> Features:
        """Clips ``[B, F, 3, H, W]`` (or images ``[B, 3, H, W]``, one frame each) -> pooled ``[B, D]``."""
        if pixels.dim() == 4:
            pixels = pixels.unsqueeze(1)
        if pixels.dim() != 5:
            raise ValueError(
                f"expected clips [B, F, 3, H, W] or images [B, 3, H, W], not {list(pixels.shape)}"
            )
        frames, valid = self.encode_frames(pixels)
        weights = valid.to(frames.dtype).unsqueeze(-1)
        return Features((frames * weights).sum(dim=1) / weights.sum(dim=1))  # the mean of the real frames

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.frame_model.save(folder / FRAME_MODEL_FOLDER)
        meta = {"kind": "video", "config": self.config.as_dict(), "head": self.save_head(folder)}
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if self.temporal is not None:
            state = {k: v.detach().contiguous() for k, v in self.temporal.state_dict().items()}
            save_file(state, folder / TEMPORAL_WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: str | Path, meta: dict, frame_model: RetrievalModel) -> VideoModel:
        """The clip model saved in ``folder`` around ``frame_model``, the model saved in its
        ``FRAME_MODEL_FOLDER`` (which the registry loads, whatever its kind)."""
        folder = Path(folder)
        model = cls(frame_model, VideoConfig(**meta["config"]))
        model.load_head(folder, meta)
        if model.temporal is not None:
            model.temporal.load_state_dict(load_file(folder / TEMPORAL_WEIGHTS_FILE))
        return model


def as_video_model(model: RetrievalModel, options: dict | None = None) -> VideoModel:
    """``model`` itself when it is a video model, else it wrapped with ``options`` (meanP, 8 frames by default)."""
    if isinstance(model, VideoModel):
        return model
    return VideoModel(model, build_dataclass(VideoConfig, dict(options or {}), "model.video"))
