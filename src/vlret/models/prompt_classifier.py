"""A frozen dual encoder classifying images by learnt prompts: CoOp, and CoOp + TextRefiner.

``logits = scale * f T^T`` with ``f`` the normalised image embedding, ``T`` the prompt learner's class
embeddings (:mod:`vlret.models.coop`) and ``scale`` the model's own logit scale (frozen). With TextRefiner
(``alpha > 0``) the class embeddings are refined by the local cache, ``T~ = T + alpha W [T ; cache(T)]``
(:mod:`vlret.models.textrefiner`), and training adds the semantic loss over aligned local tokens and the L1
regulariser, then writes the step's aligned tokens into the cache. ``alpha = 0`` is CoOp exactly.

In evaluation nothing image-dependent reaches the class side, so ``T~`` is computed once per class list and
kept (:meth:`class_embeddings` caches it until the classes or the weights change): TextRefiner costs no more
per image than CoOp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlret.models.base import RetrievalModel
from vlret.models.coop import DEFAULT_INIT, PromptLearner
from vlret.models.textrefiner import Aggregation, FeatureAlignment, LocalCache


@dataclass
class RefinerConfig:
    """TextRefiner's settings (spec section 4.1); ``alpha = 0`` turns it off (CoOp)."""

    alpha: float = 0.2
    cache_size: int = 25
    momentum: float = 0.8
    semantic_divisor: float = 50.0  # beta: L_sem / beta
    regulariser_weight: float = 20.0  # gamma


class PromptClassifier(nn.Module):
    """See the module docstring; ``model`` stays frozen."""

    def __init__(
        self,
        model: RetrievalModel,
        classnames: list[str],
        init: str = DEFAULT_INIT,
        refiner: RefinerConfig | None = None,
        context: str = "per_word",
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.prompts = PromptLearner(model, classnames, init, context)
        self.refiner = refiner or RefinerConfig(alpha=0.0)
        width = self.prompts.class_embeddings(model).shape[-1]
        if self.refines:
            self.cache = LocalCache(self.refiner.cache_size, width, self.refiner.momentum)
            self.aggregation = Aggregation(width, self.refiner.alpha)
            self.alignment = FeatureAlignment(width)
        self._classes_at_eval: torch.Tensor | None = None

    @property
    def refines(self) -> bool:
        return self.refiner.alpha > 0

    def train(self, mode: bool = True) -> PromptClassifier:
        super().train(mode)
        self.model.eval()  # frozen: its norms and dropout stay in inference mode
        self._classes_at_eval = None
        return self

    def set_classes(self, classnames: list[str]) -> None:
        """Classify among other classes (base-to-new): new prompts, the same context, ``W`` and cache."""
        ctx = self.prompts.ctx.detach().clone()
        self.prompts = PromptLearner(self.model, classnames, self.prompts.init, self.prompts.context).to(
            ctx.device
        )
        with torch.no_grad():
            self.prompts.ctx.copy_(ctx)
        self._classes_at_eval = None

    def _refine(self, text: torch.Tensor) -> torch.Tensor:
        if not self.refines:
            return text
        return self.aggregation(text, self.cache.read(text)[1])

    def class_embeddings(self) -> torch.Tensor:
        """``[C, D]`` the class side of the logits (refined with TextRefiner); computed once in eval mode."""
        if self.training:
            return self._refine(self.prompts.class_embeddings(self.model))
        if self._classes_at_eval is None:
            with torch.no_grad():
                self._classes_at_eval = self._refine(self.prompts.class_embeddings(self.model))
        return self._classes_at_eval

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` class logits of preprocessed images."""
        with torch.no_grad():
            image = F.normalize(self.model.encode_images(pixels).embeds, dim=-1)
        return self.model.logit_scale.exp() * image @ self.class_embeddings().T
