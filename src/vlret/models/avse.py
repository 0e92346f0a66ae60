"""AVSE's image side: radial-bias sampling of patch tokens into views, and VSE-infinity's token drop.

:class:`RadialBiasSampler` picks, for every image and view, a centre cell on the patch grid and keeps the
``k`` patches nearest to it (Euclidean distance in grid units, ties broken by the lower flat index), or, with
``select="multinomial"``, draws ``k`` patches without replacement with probabilities ``exp(-alpha * dist)``.
A ``[CLS]`` token, when the tower has one, is always kept in front. ``k = floor(rate * (N + 1))`` counts the
``[CLS]`` token among the ``N`` patches as the released code does (``count_includes_cls``); a tower without
one keeps ``floor(rate * N)``. The rate is 0.8 in training and 0.9 in evaluation.

Centres: in training they come from torch's global generator (seeded by the trainer and saved with its
checkpoints). In evaluation ``eval_centres="fixed"`` derives them from a hash of each image's pixels and the
view's number, so an image's embedding does not depend on its batch or on earlier calls; ``"random"`` draws
them as in training (the released code's behaviour, whose results then depend on the generator's state).

How a tower turns views into tokens (:func:`encode_views`): a tower that can split its forward pass into
``input_tokens`` and ``run_blocks`` (ViTs) has its *input* tokens sampled and runs its blocks once per view;
any other tower with a square token grid (Swin, CNN feature maps) runs once on the full image and its output
grid is sampled per view (AVSE's released Swin path cannot run; this is the spec's replacement).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from vlret.models.base import Features

SELECTIONS = ("topk", "multinomial")
EVAL_CENTRES = ("fixed", "random")


@dataclass
class RadialBiasSampler:
    """Which patches each view keeps; see the module docstring."""

    count: int = 2
    rate_train: float = 0.8
    rate_eval: float = 0.9
    select: str = "topk"
    alpha: float = 4.0
    count_includes_cls: bool = True
    eval_centres: str = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"views.count must be at least 1, not {self.count}")
        for key in ("rate_train", "rate_eval"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ValueError(f"views.{key} must be in (0, 1], not {getattr(self, key)}")
        if self.select not in SELECTIONS:
            raise ValueError(f"views.select must be one of {SELECTIONS}, not {self.select!r}")
        if self.eval_centres not in EVAL_CENTRES:
            raise ValueError(f"views.eval_centres must be one of {EVAL_CENTRES}, not {self.eval_centres!r}")
        if self.alpha < 0:
            raise ValueError(f"views.alpha must be >= 0, not {self.alpha}")

    def keep_count(self, n_patches: int, has_cls: bool, training: bool) -> int:
        """How many patches a view keeps out of ``n_patches`` (at least 1, at most all)."""
        rate = self.rate_train if training else self.rate_eval
        counted = n_patches + 1 if has_cls and self.count_includes_cls else n_patches
        return max(1, min(n_patches, math.floor(rate * counted)))

    def _random(self, training: bool) -> bool:
        return training or self.eval_centres == "random"

    def image_keys(self, pixels: torch.Tensor, training: bool) -> list[bytes] | None:
        """A content hash per image when evaluation uses fixed centres (None when centres are random)."""
        if self._random(training):
            return None
        return [_content_key(row, self.seed) for row in pixels]

    def centres(self, pixels: torch.Tensor, n_patches: int, keys: list[bytes] | None) -> torch.Tensor:
        """``[views, batch]`` flat indices of each view's centre cell: random, or from the image ``keys``."""
        if keys is None:
            return torch.randint(n_patches, (self.count, len(pixels))).to(pixels.device)
        picked = [[_hashed_index(key, view, n_patches) for key in keys] for view in range(self.count)]
        return torch.tensor(picked, dtype=torch.long, device=pixels.device)

    def select_patches(self, pixels: torch.Tensor, side: int, has_cls: bool, training: bool) -> torch.Tensor:
        """``[views, batch, k]`` flat patch indices (into the ``side x side`` grid) each view keeps."""
        n_patches = side * side
        k = self.keep_count(n_patches, has_cls, training)
        keys = self.image_keys(pixels, training)
        centres = self.centres(pixels, n_patches, keys)  # [V, B]
        distance = grid_distances(side, pixels.device)[centres]  # [V, B, N]
        if self.select == "topk":
            return torch.sort(distance, dim=-1, stable=True).indices[..., :k]
        weights = torch.exp(-self.alpha * distance)  # [V, B, N]
        if keys is None:
            drawn = torch.multinomial(weights.reshape(-1, n_patches), k, replacement=False)
            return drawn.reshape(self.count, len(pixels), k)
        return torch.stack(
            [
                torch.stack([_seeded_draw(weights[v, b], k, key, v) for b, key in enumerate(keys)])
                for v in range(self.count)
            ]
        )


def grid_distances(side: int, device: torch.device | None = None) -> torch.Tensor:
    """``[N, N]`` Euclidean distances between the cells of a ``side x side`` grid (flat row-major indices)."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cells = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(device, torch.float32)
    return torch.cdist(cells, cells)


def _content_key(pixels: torch.Tensor, seed: int) -> bytes:
    data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16, key=str(seed).encode()).digest()


def _hashed_index(key: bytes, view: int, size: int) -> int:
    digest = hashlib.blake2b(key + view.to_bytes(4, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % size


def _seeded_draw(weights: torch.Tensor, k: int, key: bytes, view: int) -> torch.Tensor:
    # fixed evaluation: the draw depends on the image and the view only, never on the call order
    generator = torch.Generator().manual_seed(_hashed_index(key, view + 1_000_000, 2**62))
    return torch.multinomial(weights.cpu(), k, replacement=False, generator=generator).to(weights.device)


def square_side(n_tokens: int) -> int:
    """The side of a square grid of ``n_tokens`` cells; raises if there is none."""
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"radial-bias views need a square token grid; this tower gives {n_tokens} tokens")
    return side


def _gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[b, index[b]]`` for every row: ``[B, T, C]`` with ``[B, k]`` -> ``[B, k, C]``."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def encode_views(tower, pixels: torch.Tensor, sampler: RadialBiasSampler, training: bool) -> list[Features]:
    """Each view's token features (``[B, T_v, C]`` with masks) from an image tower; see the module docstring."""
    if getattr(tower, "samples_inputs", False):
        inputs = tower.input_tokens(pixels)  # [B, 1 + N, C] for a tower with [CLS], else [B, N, C]
        has_cls = tower.has_cls
        patches = inputs[:, 1:] if has_cls else inputs
        chosen = sampler.select_patches(pixels, square_side(patches.shape[1]), has_cls, training)
        views = []
        for index in chosen:
            kept = _gather(patches, index)
            if has_cls:
                kept = torch.cat([inputs[:, :1], kept], dim=1)
            views.append(tower.run_blocks(kept))
        return views
    full = tower(pixels)
    if full.tokens is None:
        raise ValueError(f"the {tower.name} tower returns no tokens to sample views from")
    chosen = sampler.select_patches(pixels, square_side(full.tokens.shape[1]), False, training)
    return [Features(full.embeds, _gather(full.tokens, index)) for index in chosen]


def drop_tokens(mask: torch.Tensor, max_rate: float, apply_prob: float = 0.8) -> torch.Tensor:
    """VSE-infinity's size augmentation on a ``[B, T]`` token mask (training only): with probability
    ``apply_prob`` an image draws ``u ~ U(0, 1)`` and drops each token with probability ``max_rate * u``
    (the released rule: ``u > 1 - apply_prob``, rate ``max_rate * u``). A row keeps at least one token."""
    batch, width = mask.shape
    u = torch.rand(batch, 1, device=mask.device)
    applies = u > 1.0 - apply_prob
    dropped = (torch.rand(batch, width, device=mask.device) < max_rate * u) & applies
    kept = mask & ~dropped
    empty = ~kept.any(dim=1)
    if empty.any():  # keep the first real token of a row that lost them all
        first = mask.float().argmax(dim=1)
        kept[empty, first[empty]] = True
    return kept
