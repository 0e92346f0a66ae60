"""Semantic targets from the training captions: what VSL asks a batch's score ranking to agree with.

Every caption becomes a unigram TF-IDF vector with scikit-learn's defaults (lower-cased; tokens are runs of
two or more word characters, so "a" is dropped; smooth idf ``ln((1+n)/(1+df)) + 1``; raw term counts;
L2-normalised rows), fitted on all captions of the training split. An image's vector ``U_a`` is the mean of
its captions' vectors. For a batch of pairs:

- ``visual(item_ids)[a, b] = <U_a, U_b>``: the mean TF-IDF cosine between the captions of two images
  (VSL's "CIDEr" target; equal to the 5 x 5 average-pooled Gram matrix of the reference code);
- ``textual(caption_ids)[a, b] = <u_a, u_b>``: the cosine of the batch's own captions (the TSL ablation).

Everything stays sparse: the reference densifies the whole split, which for COCO train would take more than
100 GB. Images are grouped by the dataset's caption-to-item map, not by ``caption_index // 5``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


class CaptionSemanticTargets:
    """Sparse TF-IDF vectors of a split's captions and of its images (means over their captions)."""

    def __init__(self, captions: Sequence[str], caption_item: np.ndarray, n_items: int | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        caption_item = np.asarray(caption_item, dtype=np.int64)
        if len(captions) != len(caption_item):
            raise ValueError(f"{len(captions)} captions but {len(caption_item)} caption-to-item entries")
        if len(captions) == 0:
            raise ValueError("no captions to build TF-IDF targets from")
        n_items = int(caption_item.max()) + 1 if n_items is None else n_items
        try:
            self.captions = TfidfVectorizer().fit_transform(list(captions)).tocsr()  # [captions, vocab]
        except ValueError as exc:  # every caption is empty or one-letter words
            raise ValueError(f"TF-IDF targets: {exc}") from None
        counts = np.bincount(caption_item, minlength=n_items).astype(np.float64)
        weights = 1.0 / np.maximum(counts[caption_item], 1.0)
        pool = sp.csr_matrix(
            (weights, (caption_item, np.arange(len(captions)))), shape=(n_items, len(captions))
        )
        self.items = (pool @ self.captions).tocsr()  # [items, vocab]: mean caption vector per image

    def visual(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``[B, B]``: mean caption TF-IDF cosine between the images of the batch's pairs."""
        return self._gram(self.items, item_ids)

    def textual(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """``[B, B]``: TF-IDF cosine between the batch's captions."""
        return self._gram(self.captions, caption_ids)

    @staticmethod
    def _gram(vectors: sp.csr_matrix, ids: torch.Tensor) -> torch.Tensor:
        rows = vectors[ids.detach().cpu().numpy()]
        gram = (rows @ rows.T).toarray()
        return torch.from_numpy(gram).to(device=ids.device, dtype=torch.float32)
