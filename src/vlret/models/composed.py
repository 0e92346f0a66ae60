"""A model composed of any image tower, any text tower and trainable projections into one space.

``create_model("composed", image_tower="efficientnet-lite0", text_tower="minilm", embed_dim=256,
projection="linear")``; towers are frozen when pretrained and trained when not, unless ``freeze_image`` /
``freeze_text`` say otherwise. Projections map the towers' global vectors
*and* their tokens into the joint space (one projection per side, shared by both), so token-level heads
work on composed models too. ``projection="mlp"`` adds a two-layer MLP beside the linear map (its output
is the sum, as in VSE-infinity's feature projection); ``"mlp_bn"`` puts a batch norm (over real tokens)
between the MLP's layers, as AVSE's text head does.

AVSE's asymmetric image side: ``views={"count": 2, ...}`` (see :class:`~vlret.models.avse.RadialBiasSampler`)
encodes every image as ``count`` views, each a radial-bias sample of the tower's tokens, projected token by
token, pooled (GPO) and L2-normalised; the global vector is the views side by side (``[B, count * embed_dim]``)
and is scored by the ``aeom`` head. ``image_token_drop`` and ``text_word_augment`` (VSE-infinity's size
augmentation of image tokens and caption words, see :mod:`vlret.models.word_augment`), ``text_dropout`` on the
text tower's states and ``text_norm: layernorm`` after pooling complete AVSE's encoders. Augmented captions
bypass a frozen text tower's memo (they differ every epoch).

A frozen tower runs in eval mode without gradients, whatever mode the model is in, so its batch-norm
statistics stay the pretrained ones; with ``memo_size > 0`` its outputs are remembered by input content,
so epochs after the first skip the frozen tower entirely (inputs change under random crops: keep
``data.crop_scale`` at [1, 1] to benefit).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vlret.models.avse import RadialBiasSampler, drop_tokens, encode_views
from vlret.models.backbones import IMAGE_TOWERS, TEXT_TOWERS, build_image_tower, build_text_tower
from vlret.models.base import Features, RetrievalModel
from vlret.models.files import MODEL_CONFIG_FILE
from vlret.models.pooling import GPO
from vlret.models.word_augment import augment_words
from vlret.models.word_tokenizer import words_outside

PROJECTIONS = ("linear", "mlp", "mlp_bn", "none")
TEXT_NORMS = ("none", "layernorm")
PROJECTION_INITS = ("torch", "xavier")
POOLINGS = ("tower", "gpo")


@dataclass
class ComposedConfig:
    image_tower: str = "efficientnet-lite0"
    text_tower: str = "minilm"
    embed_dim: int = 256
    projection: str = "linear"  # or "mlp", or "none" (the tower's own width must be embed_dim)
    image_projection: str | None = None  # this side's projection when it differs from `projection`
    text_projection: str | None = None
    projection_init: str = "torch"  # or "xavier": uniform +-sqrt(6 / (in + out)), bias 0 (SGRAF's)
    freeze_image: bool | None = None  # None: frozen when the tower is pretrained, trained when it is not
    freeze_text: bool | None = None
    max_text_length: int = 64
    memo_size: int = 100_000  # frozen-tower outputs remembered (0: none)
    pooling: str = "tower"  # "tower": the tower's global vector, projected; "gpo": GPO over projected tokens
    views: dict | None = None  # AVSE's radial-bias views: RadialBiasSampler's settings (None: one image)
    image_token_drop: float = 0.0  # VSE-infinity's size augmentation: the largest token drop rate (training)
    text_dropout: float = 0.0  # dropout on the text tower's states before the projection (AVSE: 0.2)
    text_word_augment: float = 0.0  # VSE-infinity's word-level size augmentation: words perturbed (AVSE: 0.2)
    text_norm: str = "none"  # or "layernorm" on the pooled text vector (AVSE)
    image_options: dict = field(default_factory=dict)  # the image tower's own settings (regions: dim)
    text_options: dict = field(default_factory=dict)  # the text tower's (bigru: vocab, min_count, ...)

    def __post_init__(self) -> None:
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"image_tower must be one of {IMAGE_TOWERS}, not {self.image_tower!r}")
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, not {self.text_tower!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        for key in ("projection", "image_projection", "text_projection"):
            value = getattr(self, key)
            if value not in PROJECTIONS and not (value is None and key != "projection"):
                raise ValueError(f"{key} must be one of {PROJECTIONS}, not {value!r}")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(
                f"projection_init must be one of {PROJECTION_INITS}, not {self.projection_init!r}"
            )
        for name in ("embed_dim", "max_text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.memo_size < 0:
            raise ValueError(f"memo_size must be >= 0, not {self.memo_size}")
        for name in ("image_token_drop", "text_dropout", "text_word_augment"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.text_norm not in TEXT_NORMS:
            raise ValueError(f"text_norm must be one of {TEXT_NORMS}, not {self.text_norm!r}")
        if self.views is not None:
            if not isinstance(self.views, dict):
                raise ValueError(f"views must be a mapping of RadialBiasSampler settings, not {self.views!r}")
            _sampler(self.views)  # its own checks (count, rates, selection) when the recipe is read
            if self.pooling != "gpo":
                raise ValueError("views pool each view's tokens: set pooling: gpo")


class Projection(nn.Module):
    """A tower's features into the joint space: linear, linear + MLP (``mlp``, ``mlp_bn`` with a batch norm
    between the MLP's layers), or as they are (``none``)."""

    def __init__(self, width: int, dim: int, kind: str, init: str = "torch", side: str = "image"):
        super().__init__()
        if kind == "none" and width != dim:
            raise ValueError(
                f"{side}_projection none: the {side} tower's width {width} must equal embed_dim {dim}"
            )
        self.linear = None if kind == "none" else nn.Linear(width, dim)
        hidden = dim // 2 or 1
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        elif kind == "mlp_bn":
            self.mlp = nn.Sequential(
                nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )
        else:
            self.mlp = None
        if init == "xavier":
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, width]`` or tokens ``[B, T, width]`` (``mask``: their real positions, the only ones a
        batch norm sees; AVSE's code normalises the pads too)."""
        if self.linear is None:
            return x
        if self.mlp is None:
            return self.linear(x)
        if not isinstance(self.mlp[1], nn.BatchNorm1d):
            return self.linear(x) + self.mlp(x)
        first, norm, *rest = self.mlp
        hidden = first(x)
        if hidden.ndim == 2:
            hidden = norm(hidden)
        else:
            real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
            normed = torch.zeros_like(hidden)
            normed[real] = norm(hidden[real])
            hidden = normed
        for layer in rest:
            hidden = layer(hidden)
        return self.linear(x) + hidden


def _sampler(views: dict | None) -> RadialBiasSampler | None:
    if views is None:
        return None
    try:
        return RadialBiasSampler(**views)
    except TypeError as exc:
        raise ValueError(f"views: {exc}") from None


class _Memo:
    """Outputs of a frozen tower by the bytes of each input row (bounded; CPU copies).

    A batch runs the tower only on the rows it has not seen (each distinct row once); the rest come from
    the memo. Tokens are kept (as float16, trimmed to their real length) only when the head reads them.
    What a row returns thus depends on the memo's history (computed now, in this batch, or remembered from
    the batch it first came in): a resumed run restores the memo (:mod:`vlret.train.memo_store`).
    """

    def __init__(self, size: int):
        self.size = size
        self.rows: dict[bytes, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.unsaved: list[bytes] = []  # rows added since :meth:`take_unsaved` (the trainer persists them)

    def take_unsaved(self) -> list[tuple[bytes, torch.Tensor, torch.Tensor | None]]:
        """The rows added since the last call, in the order they were added."""
        rows = [(k, *self.rows[k]) for k in self.unsaved]
        self.unsaved = []
        return rows

    def restore(self, rows: list[tuple[bytes, torch.Tensor, torch.Tensor | None]]) -> None:
        """Put back rows a run persisted (up to the memo's size), as if computed now."""
        for key, embeds, tokens in rows:
            if len(self.rows) >= self.size:
                break
            self.rows.setdefault(key, (embeds, tokens))

    @staticmethod
    def keys(rows: list[torch.Tensor] | torch.Tensor) -> list[bytes]:
        """A content key per row (rows may differ in length: a text's real token ids)."""
        return [
            hashlib.blake2b(r.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
            for r in rows
        ]

    def run(
        self, keys: list[bytes], device: torch.device, call, keep_tokens: bool, length: int | None = None
    ) -> Features:
        """The tower's output for every row: ``call(index)`` computes rows ``index`` (``None``: all).
        ``length``: the token count to pad to (texts: the batch's padded length)."""
        if self.size == 0:
            return call(None)
        fresh: dict[bytes, tuple[torch.Tensor, torch.Tensor | None]] = {}
        todo = list(dict.fromkeys(k for k in keys if k not in self.rows))
        if todo:
            first = {k: keys.index(k) for k in todo}
            out = call(torch.tensor([first[k] for k in todo], device=device))
            for n, k in enumerate(todo):
                fresh[k] = (out.embeds[n], self._real_tokens(out, n) if keep_tokens else None)
            for k in todo[: max(0, self.size - len(self.rows))]:
                embeds, tokens = fresh[k]
                self.rows[k] = (embeds.cpu(), None if tokens is None else tokens.to("cpu", torch.float16))
                self.unsaved.append(k)
        parts = [fresh.get(k) or self.rows[k] for k in keys]
        embeds = torch.stack([p[0].to(device) for p in parts])
        if parts[0][1] is None:
            return Features(embeds)
        width = length or max(len(p[1]) for p in parts)
        tokens = embeds.new_zeros((len(parts), width, parts[0][1].shape[1]))
        mask = torch.zeros((len(parts), width), dtype=torch.bool, device=device)
        for n, (_, t) in enumerate(parts):
            tokens[n, : len(t)] = t.to(device, embeds.dtype)
            mask[n, : len(t)] = True
        return Features(embeds, tokens, mask)

    @staticmethod
    def _real_tokens(out: Features, n: int) -> torch.Tensor | None:
        if out.tokens is None:
            return None
        if out.mask is None:
            return out.tokens[n]
        return out.tokens[n][out.mask[n].bool()]


class ComposedModel(RetrievalModel):
    """Image tower + text tower + projections; see the module docstring."""

    def __init__(self, cfg: ComposedConfig, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.name = "composed"
        self.freeze_image = image_tower.pretrained if cfg.freeze_image is None else cfg.freeze_image
        self.freeze_text = text_tower.pretrained if cfg.freeze_text is None else cfg.freeze_text
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_transform = image_tower.transform
        self.input_kind = getattr(image_tower, "input_kind", "pixels")
        self.image_proj = self._projection(image_tower, "image")
        self.text_proj = self._projection(text_tower, "text")
        # GPO (VSE-infinity, AVSE): each side's global vector pools its projected tokens instead
        self.image_pool = GPO() if cfg.pooling == "gpo" else None
        self.text_pool = GPO() if cfg.pooling == "gpo" else None
        self.sampler = _sampler(cfg.views)
        self.text_dropout = nn.Dropout(cfg.text_dropout)
        self.text_norm = nn.LayerNorm(cfg.embed_dim) if cfg.text_norm == "layernorm" else None
        self.logit_scale = nn.Parameter(torch.tensor(2.659260036932778))  # log(1 / 0.07), CLIP's start
        self.backbone_prefixes = ("image_tower.", "text_tower.")
        for tower, frozen in ((image_tower, self.freeze_image), (text_tower, self.freeze_text)):
            tower.requires_grad_(not frozen)
        # Only a frozen tower's outputs can be remembered: a trained one changes every step.
        self._image_memo = _Memo(cfg.memo_size if self.freeze_image else 0)
        self._text_memo = _Memo(cfg.memo_size if self.freeze_text else 0)
        self.word_pieces = text_tower.word_pieces() if cfg.text_word_augment > 0 else None
        if cfg.text_word_augment > 0 and self.word_pieces is None:
            raise ValueError(f"text_word_augment: the {cfg.text_tower} text tower does not support it")
        self.train()  # frozen towers start (and stay) in eval mode

    def _projection(self, tower: nn.Module, side: str) -> Projection:
        kind = getattr(self.cfg, f"{side}_projection") or self.cfg.projection
        return Projection(tower.width, self.cfg.embed_dim, kind, self.cfg.projection_init, side)

    @classmethod
    def create(cls, captions: list[str] | None = None, **options) -> ComposedModel:
        """A new model; ``captions`` (the training captions) build a word tower's vocabulary."""
        cfg = ComposedConfig(**options)
        image = build_image_tower(cfg.image_tower, options=cfg.image_options)
        text = build_text_tower(
            cfg.text_tower, cfg.max_text_length, options=cfg.text_options, captions=captions
        )
        return cls(cfg, image, text)

    def memos(self) -> dict[str, _Memo]:
        """The frozen towers' memos by side (those that remember anything): state a resumed run needs, since
        what a memo returns was computed in the batch where its row first appeared."""
        return {
            side: memo for side, memo in (("image", self._image_memo), ("text", self._text_memo)) if memo.size
        }

    def train(self, mode: bool = True) -> ComposedModel:
        super().train(mode)
        if self.freeze_image:
            self.image_tower.eval()
        if self.freeze_text:
            self.text_tower.eval()
        return self

    def identity(self) -> dict:
        return {
            **super().identity(),
            "config": asdict(self.cfg),
            "towers": [self.image_tower.describe(), self.text_tower.describe()],
        }

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_tower.tokenize(texts)

    def unknown_words(self, texts: list[str]) -> tuple[int, int] | None:
        """(words, words read as ``<unk>``) for a word-vocabulary text tower; None for subword towers."""
        counter = getattr(self.text_tower, "unknown_words", None)
        return None if counter is None else counter(texts)

    def unknown_query_words(self, text: str) -> list[str]:
        tokenizer = getattr(self.text_tower, "tokenizer", None)
        if getattr(self.text_tower, "unknown_words", None) is None or tokenizer is None:
            return []  # a subword tower
        return words_outside(tokenizer, text)

    def _tower(
        self, tower: nn.Module, frozen: bool, memo: _Memo | None, key_rows: torch.Tensor, inputs, length=None
    ):
        """A tower's output; a frozen one runs without gradients and through ``memo`` (None: not)."""
        if not frozen:
            return tower(inputs)

        def call(index: torch.Tensor | None) -> Features:
            if index is None:
                return tower(inputs)
            if isinstance(inputs, dict):
                return tower({name: value[index] for name, value in inputs.items()})
            return tower(inputs[index])

        with torch.no_grad():
            if memo is None or memo.size == 0:
                return call(None)
            keep_tokens = self.head.uses_tokens or self.cfg.pooling == "gpo"
            return memo.run(memo.keys(key_rows), self.device, call, keep_tokens, length)

    def encode_images(self, pixels: torch.Tensor) -> Features:
        if self.sampler is not None:
            return self._encode_views(pixels)
        f = self._tower(self.image_tower, self.freeze_image, self._image_memo, pixels, pixels)
        return self._project(f, "image")

    def _encode_views(self, pixels: torch.Tensor) -> Features:
        """AVSE: every view projected, pooled and normalised on its own, then the views side by side."""
        with torch.no_grad() if self.freeze_image else nullcontext():
            views = encode_views(self.image_tower, pixels, self.sampler, self.training)
        projected = [self._project(view, "image") for view in views]
        tokens = [f.tokens for f in projected]
        masks = [
            torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if f.mask is None else f.mask
            for f, t in zip(projected, tokens, strict=True)
        ]
        embeds = torch.cat([F.normalize(f.embeds, dim=-1) for f in projected], dim=1)
        return Features(embeds, torch.cat(tokens, dim=1), torch.cat(masks, dim=1))

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        memo = self._text_memo
        if self.training and self.word_pieces is not None:
            batch, memo = augment_words(batch, self.word_pieces, self.cfg.text_word_augment), None
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        keys = [row[real] for row, real in zip(ids, mask, strict=True)]  # independent of the batch's padding
        f = self._tower(self.text_tower, self.freeze_text, memo, keys, batch, ids.shape[1])
        return self._project(f, "text")

    def _project(self, f: Features, side: str) -> Features:
        """A tower's features into the joint space: tokens projected, the global vector projected or pooled."""
        projection, pool = (
            (self.image_proj, self.image_pool) if side == "image" else (self.text_proj, self.text_pool)
        )
        embeds, tokens = f.embeds, f.tokens
        if side == "text":  # identity unless text_dropout is set and the model trains
            embeds = self.text_dropout(embeds)
            tokens = None if tokens is None else self.text_dropout(tokens)
        real = f.mask
        if tokens is not None and real is None:
            real = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        tokens = None if tokens is None else projection(tokens, real)
        if pool is None:
            out = Features(projection(embeds), tokens, f.mask)
        elif tokens is None:
            raise ValueError("pooling: gpo needs a tower that returns tokens")
        else:
            pooled_over = real.bool()
            if side == "image" and self.training and self.cfg.image_token_drop > 0:
                pooled_over = drop_tokens(pooled_over, self.cfg.image_token_drop)
            out = Features(pool(tokens, pooled_over), tokens, f.mask)
        if side == "text" and self.text_norm is not None:
            out.embeds = self.text_norm(out.embeds)
        return out

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "composed", "config": asdict(self.cfg), "head": self.save_head(folder)}
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.image_tower.save_files(folder)
        self.text_tower.save_files(folder)
        save_file(self.tower_state_dict(), folder / "model.safetensors")

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> ComposedModel:
        folder = Path(folder)
        cfg = ComposedConfig(**meta["config"])
        saved_image = folder / "image_tower"
        image = build_image_tower(
            cfg.image_tower,
            pretrained=False,
            options=cfg.image_options,
            saved=saved_image if saved_image.is_dir() else None,
        )
        text = build_text_tower(
            cfg.text_tower, cfg.max_text_length, saved=folder / "text_tower", options=cfg.text_options
        )
        model = cls(cfg, image, text)
        model.load_head(folder, meta)
        model.load_tower_state_dict(load_file(folder / "model.safetensors"))
        return model
