"""Single-modal and mixed-gallery retrieval of an encoded split, graded by caption relevance (RVLR).

``relevance`` names where the ``[captions, items]`` relevance of the protocol-selected split comes from:
``"rouge-l"`` builds it (:mod:`vlret.evaluate.relevance`, cached on disk by content) or a ``.npy`` file
gives it (TERAN's and RVLR's released ``<data>-rougeL.npy``, reshaped to ``[captions, items]``).

Cross-modal scores in the mixed gallery: in ``clean`` mode the model's own similarity (its head, or the
embeddings' dot product for a re-ranking head, so both blocks share one scale); in ``compat`` mode what
RVLR's code uses: a re-ranking head's scores inside the embeddings' top-``k_test`` and -100 outside, and the
transposed text-to-image block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlret.data.records import RetrievalDataset
from vlret.errors import DataError
from vlret.evaluate.encode import EncodedDataset, default_cache_dir
from vlret.evaluate.ndcg import NDCG_KS, mixed_ndcg, single_modal_ndcg
from vlret.evaluate.relevance import relevance_matrix
from vlret.evaluate.scoring import block_shape, score_block, score_candidates
from vlret.models.base import RetrievalModel
from vlret.models.heads import SimilarityHead

OUTSIDE_TOP_K = -100.0  # RVLR's score for a candidate the re-ranker did not score


def load_relevance(source: str, selected: RetrievalDataset, cache_dir: str | Path) -> np.ndarray:
    """The ``[captions, items]`` relevance of ``selected`` (see the module docstring)."""
    shape = (len(selected.captions), len(selected.items))
    if source == "rouge-l":
        starts = np.array([caps[0] for caps in selected.item_to_captions], np.int64)
        return relevance_matrix([c.text for c in selected.captions], starts, Path(cache_dir) / "relevance")
    path = Path(source)
    if not path.is_file():
        raise DataError(path, None, "relevance file not found (expected rouge-l or a .npy file)")
    matrix = np.load(path, mmap_mode="r")
    if matrix.size != shape[0] * shape[1]:
        raise DataError(path, None, f"{matrix.shape}: expected {shape[0]} x {shape[1]} (captions x items)")
    return matrix.reshape(shape)


def _head_matrix(head: SimilarityHead, encoded: EncodedDataset, chunk: int = 256) -> np.ndarray:
    """The head's ``[captions, items]`` scores, in blocks the head's pair cost bounds."""
    text_chunk, item_chunk = block_shape(head, encoded.texts, encoded.items, chunk, None)
    out = np.zeros((len(encoded.texts), len(encoded.items)), np.float32)
    for start in range(0, len(out), text_chunk):
        texts = encoded.texts.rows(start, min(start + text_chunk, len(out)))
        out[start : start + len(texts)] = score_block(head, texts, encoded.items, item_chunk).float().numpy()
    return out


def _reranked_rows(
    head: SimilarityHead, encoded: EncodedDataset, queries: np.ndarray, t2i: bool, k: int
) -> np.ndarray:
    """``[Q, gallery]`` scores of caption (``t2i``) or item queries: the head's inside each query's top-``k``
    by the embeddings, -100 outside."""
    own, other = (
        (encoded.text_embeds, encoded.item_embeds) if t2i else (encoded.item_embeds, encoded.text_embeds)
    )
    first = torch.from_numpy(np.asarray(own[queries])) @ torch.from_numpy(np.asarray(other)).T
    top = torch.topk(first, min(k, first.shape[1]), dim=1).indices.numpy()
    rows = np.broadcast_to(np.asarray(queries)[:, None], top.shape)
    text_rows, item_rows = (rows, top) if t2i else (top, rows)
    scores = score_candidates(head, encoded.texts, encoded.items, text_rows, item_rows)
    out = np.full(first.shape, OUTSIDE_TOP_K, np.float32)
    np.put_along_axis(out, top, scores, axis=1)
    return out


def graded_metrics(
    head: SimilarityHead,
    encoded: EncodedDataset,
    selected: RetrievalDataset,
    relevance: np.ndarray,
    mode: str = "clean",
) -> dict:
    """``{"single_modal": {...}, "mixed": {...}}`` NDCG@10/20/50 (x 100) of an encoded split."""
    images, texts = encoded.item_embeds, encoded.text_embeds
    cap_item = selected.caption_to_item
    out = {"single_modal": single_modal_ndcg(images, texts, relevance, cap_item)}
    if head.reranks and mode == "compat":

        def t2i(captions):
            return _reranked_rows(head, encoded, np.asarray(captions), True, head.k_test)

        def i2t(items):
            return _reranked_rows(head, encoded, np.asarray(items), False, head.k_test)

    elif head.is_dot_product or head.reranks:

        def t2i(captions):
            return texts[captions] @ images.T

        def i2t(items):
            return images[items] @ texts.T

    else:  # a head over token features: its [captions, items] matrix, scored once in bounded blocks
        matrix = _head_matrix(head, encoded)

        def t2i(captions):
            return matrix[captions]

        def i2t(items):
            return matrix[:, items].T

    out["mixed"] = mixed_ndcg(images, texts, i2t, t2i, relevance, cap_item, mode)
    out["ndcg"] = {"ks": list(NDCG_KS), "mixed_mode": mode, "gain": "linear", "relevance_rows": "captions"}
    return out


def graded_results(
    model: RetrievalModel,
    encoded: EncodedDataset,
    selected: RetrievalDataset,
    relevance: str,
    mixed_mode: str,
    cache_dir: str | Path | None,
) -> dict:
    """Single-modal and mixed NDCG of an encoded split, and where its relevance came from."""
    folder = Path(cache_dir).parent if cache_dir else default_cache_dir().parent
    matrix = load_relevance(relevance, selected, folder)
    out = graded_metrics(model.head, encoded, selected, matrix, mixed_mode)
    out["ndcg"]["relevance"] = relevance
    return out
