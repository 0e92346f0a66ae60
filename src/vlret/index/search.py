"""Querying an index: text -> image, image -> image, and (when captions were indexed) image -> text and
text -> text. The index link is resolved once when the :class:`Searcher` opens it, so a rebuild that swaps
the link never changes an open searcher under its feet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlret.errors import ConfigError, VlretError
from vlret.evaluate.ranking import stable_topk


@dataclass
class Hit:
    rank: int  # 1 = best
    score: float
    id: str
    path: str | None = None  # images
    text: str | None = None  # captions

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of results >= 1, not {k!r}")


def _finite_query(embedding: np.ndarray) -> np.ndarray:
    if not np.isfinite(embedding).all():
        raise VlretError(
            "the model gives a non-finite embedding for this query (NaN or infinity in its weights?)"
        )
    return embedding


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


class _Vectors:
    """One searchable set: embeddings (memory-mapped) plus a FAISS index or exact search."""

    def __init__(self, embeddings: np.ndarray, faiss_index=None, nprobe: int = 1, refine: int = 0):
        self.embeddings = embeddings
        self.faiss_index = faiss_index
        self.refine = refine
        if faiss_index is not None and hasattr(faiss_index, "nprobe"):
            faiss_index.nprobe = nprobe

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.embeddings))
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if self.faiss_index is None:
            scores = torch.from_numpy(np.asarray(self.embeddings @ query[0]))[None]
            values, top = stable_topk(scores, k)
            return values[0].numpy(), top[0].numpy()
        fetch = k * self.refine if self.refine else k
        scores, ids = self.faiss_index.search(query, min(fetch, len(self.embeddings)))
        ids = ids[0][ids[0] >= 0]
        if self.refine:  # re-score the candidates exactly from the stored vectors
            exact = self.embeddings[np.sort(ids)] @ query[0]
            order = np.lexsort((np.sort(ids), -exact))[:k]
            return exact[order], np.sort(ids)[order]
        return scores[0][: len(ids)][:k], ids[:k]


class Searcher:
    """Open an index folder (or link) built by :func:`vlret.index.build_index`."""

    def __init__(self, index: str | Path, model=None):
        path = Path(index)
        if not (path / "index.json").is_file():
            raise ConfigError(f"{index}: not a vlret index (no index.json)")
        self.path = path.resolve()  # pin this version
        self.meta = self._read("index.json", _read_json)
        self.items = self._read("items.json", _read_json)
        try:
            missing = [key for key in ("model", "media_root", "choice", "captions") if key not in self.meta]
            if missing:
                raise KeyError(missing[0])
            self.media_root = Path(self.meta["media_root"])
            nprobe, refine = int(self.meta["choice"]["nprobe"]), int(self.meta["choice"]["refine"])
            self.item_numbers = {item["id"]: n for n, item in enumerate(self.items)}
        except (KeyError, TypeError, ValueError) as exc:
            self._damaged("index.json / items.json", f"a field is missing or malformed ({exc})")
        import faiss

        embeddings = self._read("embeddings.npy", lambda p: np.load(p, mmap_mode="r"))
        faiss_index = self._read("faiss.index", lambda p: faiss.read_index(str(p)))
        if not (len(self.items) == len(embeddings) == faiss_index.ntotal):
            self._damaged(
                "items.json / embeddings.npy / faiss.index",
                f"they disagree on the number of items ({len(self.items)}, {len(embeddings)}, {faiss_index.ntotal})",
            )
        self.images = _Vectors(embeddings, faiss_index, nprobe, refine)
        self.captions = None
        if (self.path / "captions.json").is_file():
            self.captions = self._read("captions.json", _read_json)
            vectors = self._read("caption_embeddings.npy", lambda p: np.load(p, mmap_mode="r"))
            if len(vectors) != len(self.captions):
                self._damaged(
                    "captions.json / caption_embeddings.npy", "they disagree on the number of captions"
                )
            self.caption_vectors = _Vectors(vectors)
        self._model = model

    def _damaged(self, name: str, reason: str):
        raise ConfigError(f"{self.path}: damaged index ({name}: {reason}); rebuild it with vlret index build")

    def _read(self, name: str, reader):
        try:
            return reader(self.path / name)
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._damaged(name, reason)

    @property
    def model(self):
        if self._model is None:
            from vlret.models import create_model

            self._model = create_model(self.meta["model"]).eval()
        return self._model

    # ----- embeddings -----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Normalised embeddings ``[n, D]`` of query texts, in one model call."""
        if any(not t.strip() for t in texts):
            raise ConfigError("empty query text")
        emb = self.model.encode_texts(self.model.tokenize(list(texts))).embeds
        return _finite_query(torch.nn.functional.normalize(emb.float(), dim=-1).numpy())

    def embed_text(self, text: str) -> np.ndarray:
        return self.embed_texts([text])[0]

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image | str | Path]) -> np.ndarray:
        """Normalised embeddings ``[n, D]`` of query images (PIL images or files), in one model call."""
        from vlret.data.images import load_image

        loaded = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        pixels = torch.from_numpy(np.stack([self.model.image_transform(im.convert("RGB")) for im in loaded]))
        emb = self.model.encode_images(pixels).embeds
        return _finite_query(torch.nn.functional.normalize(emb.float(), dim=-1).numpy())

    def embed_image(self, image: Image.Image | str | Path) -> np.ndarray:
        return self.embed_images([image])[0]

    # ----- queries --------------------------------------------------------------------------------------
    def image_hits(self, query: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` indexed images nearest to an embedding (as returned by :meth:`embed_text`)."""
        _check_k(k)
        scores, ids = self.images.search(query, k)
        return [
            Hit(r, float(s), self.items[i]["id"], path=self.items[i]["path"])
            for r, (s, i) in enumerate(zip(scores, ids, strict=True), start=1)
        ]

    def _caption_hits(self, query: np.ndarray, k: int) -> list[Hit]:
        if self.captions is None:
            raise ConfigError(f"{self.path}: no captions were indexed (build from --data to search texts)")
        scores, ids = self.caption_vectors.search(query, k)
        return [
            Hit(r, float(s), self.captions[i]["item_id"], text=self.captions[i]["text"])
            for r, (s, i) in enumerate(zip(scores, ids, strict=True), start=1)
        ]

    def text_to_image(self, text: str, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self.image_hits(self.embed_text(text), k)

    def image_to_image(self, image, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self.image_hits(self.embed_image(image), k)

    def image_to_text(self, image, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self._caption_hits(self.embed_image(image), k)

    def text_to_text(self, text: str, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self._caption_hits(self.embed_text(text), k)

    def media_path(self, item_path: str) -> Path:
        return self.media_root / item_path
