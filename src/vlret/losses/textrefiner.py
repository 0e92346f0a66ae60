"""TextRefiner's training terms (spec sections 3.3 and 3.6), besides CoOp's cross-entropy.

- **Semantic loss**: per image the aligned ``[CLS]`` token, the 5 patches the ``[CLS]`` attends to most in
  the last block (attention averaged over heads) and the mean of all tokens (``[CLS]`` included) are each
  classified against the *un-refined* class embeddings: ``CE(scale * U T^T, y repeated 7 times)``, with the
  tokens ``U`` not normalised. It trains the alignment MLP and the context.
- **Regulariser**: ``mean |normalize(T~) - T|`` over every element keeps the refined class embeddings near
  the original ones (it trains ``W`` and the context).
- The total is ``L_ce + L_sem / beta + gamma L_reg`` with ``beta = 50`` and ``gamma = 20``
  (:func:`prompt_losses`, a step's terms for CoOp and TextRefiner alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from vlret.models.prompt_classifier import PromptClassifier

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


def prompt_losses(
    classifier: PromptClassifier, pixels: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A prompt-training step's terms for ``classifier`` on a batch: CoOp's ``ce``; with TextRefiner also
    ``semantic`` and ``regulariser``, weighted into ``total``. The local cache is written after they are
    formed."""
    scale = classifier.model.logit_scale.exp()
    text = classifier.prompts.class_embeddings(classifier.model)
    if not classifier.refines:
        with torch.no_grad():
            image = F.normalize(classifier.model.encode_images(pixels).embeds, dim=-1)
        ce = F.cross_entropy(scale * image @ text.T, labels)
        return {"ce": ce, "total": ce}
    with torch.no_grad():
        tokens, attention = classifier.model.local_tokens(pixels)
    image = F.normalize(tokens[:, 0], dim=-1)
    refined = classifier._refine(text)
    aligned = classifier.alignment(tokens)
    ce = F.cross_entropy(scale * image @ refined.T, labels)
    sem = semantic_loss(semantic_tokens(aligned, attention), text, labels, float(scale))
    reg = refinement_regulariser(refined, text)
    total = ce + sem / classifier.refiner.semantic_divisor + classifier.refiner.regulariser_weight * reg
    classifier.cache.write(aligned.reshape(-1, aligned.shape[-1]))
    return {"ce": ce, "semantic": sem, "regulariser": reg, "total": total}
