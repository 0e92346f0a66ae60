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

from vlret.errors import ConfigError


@dataclass
class Hit:
    rank: int  # 1 = best
    score: float
    id: str
    path: str | None = None  # images
    text: str | None = None  # captions

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


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
            scores = self.embeddings @ query[0]
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.lexsort((top, -scores[top]))]
            return scores[top], top
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
        self.meta = json.loads((self.path / "index.json").read_text())
        self.items = json.loads((self.path / "items.json").read_text())
        self.item_numbers = {item["id"]: n for n, item in enumerate(self.items)}
        self.media_root = Path(self.meta["media_root"])
        import faiss

        choice = self.meta["choice"]
        self.images = _Vectors(
            np.load(self.path / "embeddings.npy", mmap_mode="r"),
            faiss.read_index(str(self.path / "faiss.index")),
            choice["nprobe"],
            choice["refine"],
        )
        self.captions = None
        if (self.path / "captions.json").is_file():
            self.captions = json.loads((self.path / "captions.json").read_text())
            self.caption_vectors = _Vectors(np.load(self.path / "caption_embeddings.npy", mmap_mode="r"))
        self._model = model

    @property
    def model(self):
        if self._model is None:
            from vlret.models import create_model

            self._model = create_model(self.meta["model"]).eval()
        return self._model

    # ----- embeddings -----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        if not text.strip():
            raise ConfigError("empty query text")
        emb = self.model.encode_texts(self.model.tokenize([text])).embeds
        return torch.nn.functional.normalize(emb.float(), dim=-1)[0].numpy()

    @torch.no_grad()
    def embed_image(self, image: Image.Image | str | Path) -> np.ndarray:
        if not isinstance(image, Image.Image):
            from vlret.data.images import load_image

            image = load_image(image)
        pixels = torch.from_numpy(self.model.image_transform(image.convert("RGB")))[None]
        emb = self.model.encode_images(pixels).embeds
        return torch.nn.functional.normalize(emb.float(), dim=-1)[0].numpy()

    # ----- queries --------------------------------------------------------------------------------------
    def _image_hits(self, query: np.ndarray, k: int) -> list[Hit]:
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
        return self._image_hits(self.embed_text(text), k)

    def image_to_image(self, image, k: int = 10) -> list[Hit]:
        return self._image_hits(self.embed_image(image), k)

    def image_to_text(self, image, k: int = 10) -> list[Hit]:
        return self._caption_hits(self.embed_image(image), k)

    def text_to_text(self, text: str, k: int = 10) -> list[Hit]:
        return self._caption_hits(self.embed_text(text), k)

    def media_path(self, item_path: str) -> Path:
        return self.media_root / item_path
