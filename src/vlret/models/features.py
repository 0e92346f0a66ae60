"""What every encoder returns: a global embedding per input, and token features with their mask where the
backbone has them. Models, similarity heads and losses all read this one type, so it lives apart from all
of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """Outputs of one encoder call."""

    embeds: torch.Tensor  # [B, D] global embedding
    tokens: torch.Tensor | None = None  # [B, T, D_t] patch or word features
    mask: torch.Tensor | None = None  # [B, T] bool, True where ``tokens`` holds a real token

    def __len__(self) -> int:
        return len(self.embeds)

    def rows(self, start: int, stop: int) -> Features:
        """Rows ``start:stop`` of every field."""
        return self.select(slice(start, stop))

    def select(self, index: slice | torch.Tensor) -> Features:
        """The rows ``index`` picks (a slice or an index tensor) of every field."""
        return Features(
            self.embeds[index],
            None if self.tokens is None else self.tokens[index],
            None if self.mask is None else self.mask[index],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Features:
        """On ``device``; floating fields cast to ``dtype`` when given."""

        def move(x: torch.Tensor | None, cast: bool) -> torch.Tensor | None:
            if x is None:
                return None
            return x.to(device, dtype) if cast and dtype is not None else x.to(device)

        return Features(move(self.embeds, True), move(self.tokens, True), move(self.mask, False))
