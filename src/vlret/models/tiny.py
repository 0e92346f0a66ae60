"""Small dual encoders that train on a CPU in minutes: a CNN or ViT image tower and a transformer text tower.

``tiny-cnn`` keeps the spatial layout of the last feature map in its global embedding (the map is flattened
rather than averaged) because captions talk about positions ("in the top left"); its 4 x 4 map cells are also
exposed as tokens. ``tiny-vit`` is a 4-layer ViT with a class token. The text tower is a pre-norm transformer
over a word-level vocabulary trained on the training captions; its ``[CLS]`` output is the global embedding.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from vlret.data.transforms import ImageTransform
from vlret.models.base import Features, RetrievalModel
from vlret.models.files import MODEL_CONFIG_FILE
from vlret.models.word_tokenizer import configure, train_word_tokenizer, words_outside

TINY_ARCHS = ("tiny-cnn", "tiny-vit")


@dataclass
class TinyConfig:
    arch: str = "tiny-cnn"
    image_size: int = 64
    embed_dim: int = 128  # joint space
    width: int = 128  # hidden size of both towers
    image_layers: int = 4  # ViT blocks (the CNN always has 4 stages)
    patch_size: int = 8
    text_layers: int = 2
    heads: int = 4
    max_text_length: int = 32
    dropout: float = 0.0  # in the transformer blocks of both towers
    vocab_size: int = 0  # set from the tokenizer

    def __post_init__(self) -> None:
        if self.arch not in TINY_ARCHS:
            raise ValueError(f"unknown tiny architecture {self.arch!r}; expected one of {TINY_ARCHS}")
        sizes = ("image_size", "embed_dim", "width", "image_layers", "patch_size", "text_layers", "heads")
        for name in (*sizes, "max_text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.image_size % 16:
            raise ValueError("image_size must be a multiple of 16")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.width < 8 or self.width % 8:
            raise ValueError(f"width must be a multiple of 8 (the CNN's group norm), not {self.width}")
        if self.arch == "tiny-vit" and self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")


def _conv_stage(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: results then do not depend on how a batch is split across processes.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(8, c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(8, c_out),
        nn.GELU(),
    )


def _pre_norm_transformer(cfg: TinyConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.width,
        cfg.heads,
        4 * cfg.width,
        dropout=cfg.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class TinyCNN(nn.Module):
    """4 stride-2 stages; the final grid is flattened into the global embedding and exposed as tokens."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        channels = [32, 64, cfg.width, cfg.width]
        stages, c_in = [], 3
        for c in channels:
            stages.append(_conv_stage(c_in, c))
            c_in = c
        self.stages = nn.Sequential(*stages)
        grid = cfg.image_size // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.width * grid * grid, cfg.embed_dim))
        self.token_proj = nn.Linear(cfg.width, cfg.embed_dim)

    def forward(self, pixels: torch.Tensor) -> Features:
        fmap = self.stages(pixels)  # [B, C, g, g]
        tokens = self.token_proj(fmap.flatten(2).transpose(1, 2))
        return Features(self.head(fmap), tokens, None)


class ViTTrunk(nn.Module):
    """Patch embedding, ``[CLS]``, learnt positions, pre-norm blocks and a final LayerNorm. The pass splits
    into :meth:`input_tokens` and :meth:`run_blocks`, so AVSE's views can run the blocks on sampled tokens."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, cfg.width) * 0.02)
        self.blocks = _pre_norm_transformer(cfg, cfg.image_layers)
        self.norm = nn.LayerNorm(cfg.width)

    def input_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, width]``: the ``[CLS]`` token and the patch embeddings, positions added."""
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks and the final norm over any subset of input tokens (``[CLS]`` first)."""
        return self.norm(self.blocks(tokens))

    def run_blocks_with_cls_attention(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`run_blocks`, and the last block's attention of ``[CLS]`` over the other tokens, averaged
        over heads ``[B, N]`` (TextRefiner picks the patches ``[CLS]`` attends to most)."""
        *first, last = self.blocks.layers
        x = tokens
        for layer in first:
            x = layer(x)
        h = last.norm1(x)  # pre-norm: the attention sees the normalised input
        _, weights = last.self_attn(h, h, h, need_weights=True, average_attn_weights=True)
        return self.norm(last(x)), weights[:, 0, 1:]


class TinyViT(ViTTrunk):
    """The trunk with a projection into the joint space: ``[CLS]`` is the global vector, patches the tokens."""

    def __init__(self, cfg: TinyConfig):
        super().__init__(cfg)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim)

    def forward(self, pixels: torch.Tensor) -> Features:
        x = self.proj(self.run_blocks(self.input_tokens(pixels)))
        return Features(x[:, 0], x[:, 1:], None)


class TinyTextEncoder(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_text_length, cfg.width) * 0.02)
        self.blocks = _pre_norm_transformer(cfg, cfg.text_layers)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        return self.forward_embeddings(self.embed(input_ids), attention_mask)

    def forward_embeddings(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        """The encoder from token embeddings ``[B, L, width]`` (positions added here): prompt learning
        (CoOp) feeds learnt context vectors in place of some words' embeddings."""
        mask = attention_mask.bool()
        x = embeds + self.pos[:, : embeds.shape[1]]
        x = self.proj(self.norm(self.blocks(x, src_key_padding_mask=~mask)))
        return Features(x[:, 0], x, mask)


class TinyDualEncoder(RetrievalModel):
    """A tiny image tower plus a tiny text tower; see the module docstring."""

    def __init__(self, cfg: TinyConfig, tokenizer: Tokenizer):
        super().__init__()
        cfg.vocab_size = tokenizer.get_vocab_size()
        configure(tokenizer, cfg.max_text_length)
        self.cfg = cfg
        self.name = cfg.arch
        self.tokenizer = tokenizer
        self.image_transform = ImageTransform(
            size=cfg.image_size,
            crop=cfg.image_size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resize_mode="squash",
        )
        self.image_encoder = TinyCNN(cfg) if cfg.arch == "tiny-cnn" else TinyViT(cfg)
        self.text_encoder = TinyTextEncoder(cfg)
        # CLIP's initial temperature 0.07, stored as log(1/T).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @classmethod
    def from_captions(cls, arch: str, captions: list[str], **overrides) -> TinyDualEncoder:
        """A fresh model whose vocabulary is trained on ``captions`` (normally the training split's)."""
        if not captions:
            raise ValueError(f"{arch} builds its vocabulary from training captions; none were given")
        cfg = TinyConfig(arch=arch, **overrides)
        return cls(cfg, train_word_tokenizer(captions, max_length=cfg.max_text_length))

    def identity(self) -> dict:
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return {
            **super().identity(),
            "config": asdict(self.cfg),
            "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest()[:16],
        }

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }

    def unknown_query_words(self, text: str) -> list[str]:
        return words_outside(self.tokenizer, text)

    def encode_images(self, pixels: torch.Tensor) -> Features:
        return self.image_encoder(pixels)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        return self.text_encoder(batch["input_ids"], batch["attention_mask"])

    def local_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image token in the joint space ``[B, 1 + N, D]`` (token 0 is the global embedding) and the
        last block's ``[CLS]`` attention over the patches ``[B, N]``: TextRefiner's local features."""
        if not isinstance(self.image_encoder, TinyViT):
            raise ValueError(f"{self.name}: local tokens with attention need the tiny-vit image tower")
        trunk = self.image_encoder
        out, attention = trunk.run_blocks_with_cls_attention(trunk.input_tokens(pixels))
        return trunk.proj(out), attention

    def text_token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The text tower's input embeddings of ``input_ids`` (what prompt learning edits)."""
        return self.text_encoder.embed(input_ids)

    def encode_text_embeddings(self, embeds: torch.Tensor, batch: dict[str, torch.Tensor]) -> Features:
        """:meth:`encode_texts` from input embeddings instead of ids (``batch`` gives the mask)."""
        return self.text_encoder.forward_embeddings(embeds, batch["attention_mask"])

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "tiny", "config": asdict(self.cfg), "head": self.save_head(folder)}
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(self.tower_state_dict(), folder / "model.safetensors")
        self.tokenizer.save(str(folder / "tokenizer.json"))

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> TinyDualEncoder:
        folder = Path(folder)
        model = cls(TinyConfig(**meta["config"]), Tokenizer.from_file(str(folder / "tokenizer.json")))
        model.load_head(folder, meta)
        model.load_tower_state_dict(load_file(folder / "model.safetensors"))
        return model
