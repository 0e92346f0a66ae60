"""NDCG@K with graded relevance, and RVLR's single-modal and mixed-gallery retrieval built on it.

``DCG@K = sum_{p=1..K} r_(p) / log2(p + 1)`` over the gallery sorted by score (linear gain); IDCG@K is the
same over the relevances sorted; NDCG = DCG / IDCG, 0 when IDCG is 0. Reported as the mean over queries
x 100 for K in (10, 20, 50).

**Ties** (tied embeddings give equal scores) are broken by gallery position: among equal scores the entry
with the lower index ranks first (a stable descending sort), and in the mixed galleries the images come
before the captions. So a tie places a relevant entry by where it stands in the gallery, never by chance.

Relevance comes from a ``[captions, items]`` matrix ``R`` (ROUGE-L, :mod:`vlret.evaluate.relevance`) and an
item's first caption stands in for it, as in RVLR's scripts:

- **I2I**: image ``i`` against every image by the cosine of the image embeddings, relevance ``R[first(i), j]``.
- **T2T**: the first caption of each item against every caption, relevance ``R[t, item]``.
  In both the query itself gets score 0 and relevance 0 (it adds no gain wherever it ranks).
- **I2IT** (mixed gallery of items and captions): image ``i`` against the images (cosine, relevance
  ``R[first(i), j]``) and the captions (cross-modal score, relevance ``R[t, i]``); itself kept.
- **T2IT**: the first caption of item ``i`` against the captions (cosine, ``R[t, i]``) and the images:
  ``clean`` mode scores image ``j`` with ``S_t2i(first(i), j)`` and relevance ``R[first(i), j]``; ``compat``
  mode reproduces the released code's transposed block, ``S_t2i(first(j), i)`` with ``R[first(j), i]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

NDCG_KS = (10, 20, 50)
MIXED_MODES = ("clean", "compat")


def ndcg_at_k(scores: np.ndarray | torch.Tensor, relevance: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """``[Q]`` NDCG@k of each row of ``scores`` ``[Q, G]`` against its graded ``relevance`` ``[Q, G]``."""
    scores = torch.as_tensor(np.asarray(scores, np.float64))
    relevance = torch.as_tensor(np.asarray(relevance, np.float64))
    k = min(k, scores.shape[1])
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    dcg = (relevance.gather(1, order) * discount).sum(1)
    idcg = (torch.topk(relevance, k, dim=1).values * discount).sum(1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), torch.zeros_like(dcg)).numpy()


def _mean_ndcg(rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]], n: int, ks, chunk: int) -> dict:
    """Mean NDCG@k x 100 over ``n`` queries whose (scores, relevance) come ``chunk`` rows at a time."""
    sums = dict.fromkeys(ks, 0.0)
    for start in range(0, n, chunk):
        scores, relevance = rows(start, min(start + chunk, n))
        for k in ks:
            sums[k] += float(ndcg_at_k(scores, relevance, k).sum())
    return {k: 100.0 * sums[k] / max(n, 1) for k in ks}


def first_captions(caption_to_item: np.ndarray, n_items: int) -> np.ndarray:
    """``[items]`` the index of each item's first caption (captions grouped by item)."""
    first = np.full(n_items, -1, np.int64)
    for t in range(len(caption_to_item) - 1, -1, -1):
        first[caption_to_item[t]] = t
    if (first < 0).any():
        raise ValueError(f"item {int(np.flatnonzero(first < 0)[0])} has no caption")
    return first


def single_modal_ndcg(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    relevance: np.ndarray,
    caption_to_item: np.ndarray,
    ks: Sequence[int] = NDCG_KS,
    chunk: int = 256,
) -> dict[str, float]:
    """``{"i2i_ndcg@K": ..., "t2t_ndcg@K": ...}`` for normalised image and text embeddings."""
    images, texts = torch.from_numpy(np.asarray(image_embeds)), torch.from_numpy(np.asarray(text_embeds))
    first = first_captions(caption_to_item, len(images))

    def i2i(start: int, stop: int):
        scores = (images[start:stop] @ images.T).numpy().astype(np.float64)
        rel = np.asarray(relevance[first[start:stop]], np.float64)
        rows = np.arange(stop - start)
        scores[rows, start + rows] = rel[rows, start + rows] = 0.0
        return scores, rel

    def t2t(start: int, stop: int):
        queries = first[start:stop]
        scores = (texts[queries] @ texts.T).numpy().astype(np.float64)
        rel = np.asarray(relevance[:, start:stop], np.float64).T.copy()
        rows = np.arange(stop - start)
        scores[rows, queries] = rel[rows, queries] = 0.0
        return scores, rel

    out = {}
    for name, rows in (("i2i", i2i), ("t2t", t2t)):
        for k, value in _mean_ndcg(rows, len(images), ks, chunk).items():
            out[f"{name}_ndcg@{k}"] = value
    return out


def mixed_ndcg(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    i2t_scores: Callable[[np.ndarray], np.ndarray],
    t2i_scores: Callable[[np.ndarray], np.ndarray],
    relevance: np.ndarray,
    caption_to_item: np.ndarray,
    mode: str = "clean",
    ks: Sequence[int] = NDCG_KS,
    chunk: int = 256,
) -> dict[str, float]:
    """``{"i2it_ndcg@K": ..., "t2it_ndcg@K": ...}`` over a gallery of every image and every caption.

    ``i2t_scores(items)`` gives those items' cross-modal scores against every caption ``[n, captions]``;
    ``t2i_scores(captions)`` those captions' against every item ``[n, items]``."""
    if mode not in MIXED_MODES:
        raise ValueError(f"mode must be one of {MIXED_MODES}, not {mode!r}")
    images, texts = torch.from_numpy(np.asarray(image_embeds)), torch.from_numpy(np.asarray(text_embeds))
    first = first_captions(caption_to_item, len(images))
    # compat's transposed block needs every item's first caption against every item: computed once
    t2i_first = np.asarray(t2i_scores(first)) if mode == "compat" else None

    def i2it(start: int, stop: int):
        items = np.arange(start, stop)
        image_block = (images[items] @ images.T).numpy()
        text_block = np.asarray(i2t_scores(items))
        rel = np.concatenate([relevance[first[items]], np.asarray(relevance[:, start:stop]).T], axis=1)
        return np.concatenate([image_block, text_block], axis=1), rel

    def t2it(start: int, stop: int):
        queries = first[start:stop]
        text_block = (texts[queries] @ texts.T).numpy()
        text_rel = np.asarray(relevance[:, start:stop]).T
        if mode == "clean":
            image_block = np.asarray(t2i_scores(queries))
            image_rel = np.asarray(relevance[queries])
        else:  # the released code: image j scored by S_t2i(first(j), i), relevance R[first(j), i]
            image_block = t2i_first[:, start:stop].T
            image_rel = np.asarray(relevance[first][:, start:stop]).T
        return (
            np.concatenate([image_block, text_block], axis=1),
            np.concatenate([image_rel, text_rel], axis=1),
        )

    out = {}
    for name, rows in (("i2it", i2it), ("t2it", t2it)):
        for k, value in _mean_ndcg(rows, len(images), ks, chunk).items():
            out[f"{name}_ndcg@{k}"] = value
    return out
