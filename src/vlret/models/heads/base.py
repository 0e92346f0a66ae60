"""The similarity-head interface: how a model scores texts against items.

A head turns text features and item features (:class:`~vlret.models.base.Features`: global embeddings,
and tokens with masks where the head reads them) into a score block ``[n_texts, n_items]``, higher = more
similar. The evaluator, the trainer and the index call it on blocks of both axes, so a head never sees a
whole gallery at once; :attr:`SimilarityHead.pair_cost` tells them how large a block may be.

A head that is exactly the dot product of L2-normalised global embeddings declares ``is_dot_product``;
callers then take their fast path (one matmul per block, FAISS in the index).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from vlret.models.features import Features


class SimilarityHead(nn.Module):
    """Scores ``[n_texts, n_items]`` from text and item features; subclasses implement :meth:`score`."""

    #: the name the head registry and saved models know the head by
    name: ClassVar[str]
    #: True when the head reads ``tokens`` / ``mask`` (encoders must then keep them)
    uses_tokens: ClassVar[bool] = False
    #: True when the score is exactly ``normalize(text.embeds) @ normalize(item.embeds).T``
    is_dot_product: ClassVar[bool] = False
    #: True for a cross-encoder too costly for every pair (ITM): it re-scores the top-``k_test`` of the
    #: embeddings' dot product at evaluation, and batch losses read that dot product, not the head
    reranks: ClassVar[bool] = False

    def score(self, texts: Features, items: Features) -> torch.Tensor:
        """Scores of every text against every item: ``[len(texts), len(items)]``."""
        raise NotImplementedError

    def pair_cost(self, texts: Features, items: Features) -> int:
        """Elements of intermediate memory per (text, item) pair; callers size blocks by it."""
        return 1

    def score_pairs(self, texts: Features, items: Features, chunk: int = 256) -> torch.Tensor:
        """``score(texts[i], items[i])`` for each ``i``, computed in blocks of ``chunk`` pairs."""
        out = []
        for start in range(0, len(texts), chunk):
            stop = min(start + chunk, len(texts))
            block = self.score(texts.rows(start, stop), items.rows(start, stop))
            out.append(block.diagonal())
        if not out:
            return torch.empty(0)
        return torch.cat(out)

    def options(self) -> dict:
        """The constructor arguments that rebuild this head (saved with the model)."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, **self.options()}
