"""TextRefiner's training terms (spec sections 3.3 and 3.6), besides CoOp's cross-entropy.

- **Semantic loss**: per image the aligned ``[CLS]`` token, the 5 patches the ``[CLS]`` attends to most in
  the last block (attention averaged over heads) and the mean of all tokens (``[CLS]`` included) are each
  classified against the *un-refined* class embeddings: ``CE(scale * U T^T, y repeated 7 times)``, with the
  tokens ``U`` not normalised. It trains the alignment MLP and the context.
- **Regulariser**: ``mean |normalize(T~) - T|`` over every element keeps the refined class embeddings near
  the original ones (it trains ``W`` and the context).
- The total is ``L_ce + L_sem / beta + gamma L_reg`` with ``beta = 50`` and ``gamma = 20``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOP_PATCHES = 5


def semantic_tokens(
    aligned: torch.Tensor, cls_attention: torch.Tensor, top: int = TOP_PATCHES
) -> torch.Tensor:
    """``[B * (top + 2), d]``: per image ``[CLS]``, its ``top`` most attended patches (most attended first),
    and the mean of all tokens. ``aligned`` is ``[B, 1 + N, d]``, ``cls_attention`` ``[B, N]`` over patches."""
    batch = len(aligned)
    picks = torch.topk(cls_attention, top, dim=1).indices + 1  # skip [CLS]
    patches = aligned.gather(1, picks[..., None].expand(-1, -1, aligned.shape[-1]))
    parts = [aligned[:, :1], patches, aligned.mean(dim=1, keepdim=True)]
    return torch.cat(parts, dim=1).reshape(batch * (top + 2), -1)


def semantic_loss(
    tokens: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """``CE(scale * tokens classes^T, labels)`` with each label repeated for its image's tokens."""
    per_image = len(tokens) // len(labels)
    return F.cross_entropy(scale * tokens @ classes.T, labels.repeat_interleave(per_image))


def refinement_regulariser(refined: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``mean |normalize(refined) - original|`` over every element."""
    return (F.normalize(refined, dim=-1) - original).abs().mean()
