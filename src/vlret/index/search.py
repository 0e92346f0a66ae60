"""Querying an index: text -> image, image -> image, and (when captions were indexed) image -> text and
text -> text. The index link is resolved once when the :class:`Searcher` opens it, so a rebuild that swaps
the link never changes an open searcher under its feet.

A two-stage index (a model whose head is not a dot product) answers text -> image and image -> text in two
steps: a shortlist by the cosine of global embeddings, then the head's exact score of each candidate, which
is the score the hits carry (``first_stage_score`` keeps the shortlist's). Image -> image and text -> text
compare two items or two texts, which a text-to-item head cannot score: they rank by the cosine alone.

A one-stage index whose model embeds texts without torch (conse: :mod:`vlret.models.text_queries`) answers
text queries without importing torch, which is most of a cold ``vlret search``'s time; torch and the model
are loaded when something needs them (an image query, a head's score).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vlret.errors import ConfigError, VlretError
from vlret.index.choice import FAISS_LABELS
from vlret.index.columns import StringTable
from vlret.index.layout import HEAD_CAPTIONS, HEAD_ITEMS, ITEM_FIELDS
from vlret.index.ondisk import read_on_disk
from vlret.models.files import MODEL_CONFIG_FILE
from vlret.models.text_queries import numpy_text_queries

if TYPE_CHECKING:  # torch's: imported where a model or a head is used, not to answer a text query
    import torch

    from vlret.evaluate.encode import FeatureTable
    from vlret.models.base import Features


@dataclass
class Hit:
    rank: int  # 1 = best
    score: float
    id: str
    path: str | None = None  # images
    text: str | None = None  # captions
    first_stage_score: float | None = None  # two-stage indexes: the shortlist's cosine

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _check_texts(texts: list[str]) -> None:
    if any(not t.strip() for t in texts):
        raise ConfigError("empty query text")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of results >= 1, not {k!r}")


NON_FINITE_QUERY = "the model gives a non-finite embedding for this query (NaN or infinity in its weights?)"


def _without_gradients(method):
    """``torch.no_grad()`` around ``method``, torch imported when it runs."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        import torch

        with torch.no_grad():
            return method(*args, **kwargs)

    return run


def _checked(features: Features) -> Features:
    """Query features with normalised float32 embeddings; non-finite outputs are refused."""
    import torch

    from vlret.models.base import Features

    embeds = torch.nn.functional.normalize(features.embeds.float(), dim=-1)
    for x in (embeds, features.tokens):
        if x is not None and not torch.isfinite(x).all():
            raise VlretError(NON_FINITE_QUERY)
    return Features(embeds, features.tokens, features.mask)


def stable_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best of ``scores``, best first; ties go to the lower position, also at the
    ``k``-th place (the rule of :func:`vlret.evaluate.ranking.stable_topk`)."""
    n = len(scores)
    k = min(k, n)
    candidates = np.arange(n)
    if 0 < k < n:  # every position scoring at least the k-th best value: the ties at the k-th place too
        kth_best = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth_best)
    order = np.lexsort((candidates, -scores[candidates]))[:k]
    return candidates[order]


def _best(scores: torch.Tensor, k: int) -> list[int]:
    """Positions of the ``k`` best head scores, ties to the lower position; non-finite scores are refused."""
    import torch

    from vlret.evaluate.ranking import stable_topk

    if not torch.isfinite(scores).all():
        raise VlretError("the model's head gives a non-finite score for this query")
    _, top = stable_topk(scores[None].float(), min(k, len(scores)))
    return top[0].tolist()


@dataclass
class Query:
    """An encoded query: the shortlist embedding and, for a two-stage index, the head model's features."""

    kind: str  # "text" | "image"
    vector: np.ndarray  # [D], L2-normalised
    features: Features | None = None  # one row, for the head's re-score


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


class _Vectors:
    """One searchable set: embeddings (memory-mapped) plus a FAISS index or exact search."""

    def __init__(
        self,
        embeddings: np.ndarray,
        faiss_index=None,
        nprobe: int = 1,
        refine: int = 0,
        labels: np.ndarray | None = None,
    ):
        """``labels``: the FAISS label of each row, ascending, for an index an update added to and removed
        from (:mod:`vlret.index.update`); None when the labels are the row numbers."""
        self.embeddings = embeddings
        self.faiss_index = faiss_index
        self.refine = refine
        self.labels = labels
        if faiss_index is not None and hasattr(faiss_index, "nprobe"):
            faiss_index.nprobe = nprobe

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.embeddings))
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if self.faiss_index is None:
            scores = np.asarray(self.embeddings @ query[0])
            top = stable_top(scores, k)
            return scores[top], top
        fetch = k * self.refine if self.refine else k
        scores, ids = self.faiss_index.search(query, min(fetch, len(self.embeddings)))
        ids = ids[0][ids[0] >= 0]
        if self.labels is not None:
            ids = np.searchsorted(self.labels, ids)
        if self.refine:  # re-score the candidates exactly from the stored vectors
            exact = self.embeddings[np.sort(ids)] @ query[0]
            order = np.lexsort((np.sort(ids), -exact))[:k]
            return exact[order], np.sort(ids)[order]
        return scores[0][: len(ids)][:k], ids[:k]


class Searcher:
    """Open an index folder (or link) built by :func:`vlret.index.build_index`."""

    def __init__(
        self,
        index: str | Path,
        model=None,
        first_stage_model=None,
        shortlist: int | None = None,
        item_vectors: Callable[..., object] | None = None,
    ):
        """``item_vectors``, given the index's embeddings and ``version=`` its :attr:`version_key`, returns
        what searches the items instead of the index's FAISS index (a database:
        :class:`vlret.index.qdrant.QdrantVectors`, which refuses a collection of another version)."""
        path = Path(index)
        if not (path / "index.json").is_file():
            raise ConfigError(
                f"{index}: not a vlret index (no index.json); build one with "
                "vlret index build --model MODEL --images FOLDER --out INDEX"
            )
        self.path = path.resolve()  # pin this version
        self.meta = self._read("index.json", _read_json)
        self.items = self._read_items()
        try:
            missing = [key for key in ("model", "media_root", "choice", "captions") if key not in self.meta]
            if missing:
                raise KeyError(missing[0])
            self.media_root = Path(self.meta["media_root"])
            nprobe, refine = int(self.meta["choice"]["nprobe"]), int(self.meta["choice"]["refine"])
        except (KeyError, TypeError, ValueError) as exc:
            self._damaged("index.json", f"a field is missing or malformed ({exc})")
        embeddings = self._read("embeddings.npy", lambda p: np.load(p, mmap_mode="r"))
        if item_vectors is not None:
            if len(self.items) != len(embeddings):
                self._damaged("items.* / embeddings.npy", "they disagree on the number of items")
            self.images = item_vectors(embeddings, version=self.version_key)
        else:
            self.images = self._open_vectors(embeddings, nprobe, refine)
        self.captions = self._read_captions()
        if self.captions is not None:
            vectors = self._read("caption_embeddings.npy", lambda p: np.load(p, mmap_mode="r"))
            if len(vectors) != len(self.captions):
                self._damaged(
                    "captions.json / caption_embeddings.npy", "they disagree on the number of captions"
                )
            self.caption_vectors = _Vectors(vectors)
        self._model = model
        self._first_stage_model = first_stage_model
        self.two_stage = self.meta.get("two_stage")
        if self.two_stage is not None:
            self._open_two_stage(shortlist)

    def _open_two_stage(self, shortlist: int | None) -> None:
        try:
            self.shortlist = int(shortlist or self.two_stage["shortlist"])
        except (KeyError, TypeError, ValueError) as exc:
            self._damaged("index.json", f"two_stage is malformed ({exc})")
        _check_k(self.shortlist)
        from vlret.evaluate.encode import read_table

        self.head_items = self._read(f"{HEAD_ITEMS}.embeds.npy", lambda _: read_table(self.path, HEAD_ITEMS))
        if len(self.head_items) != len(self.items):
            self._damaged(f"{HEAD_ITEMS}.*.npy", "its number of items differs from items.json")
        self.head_captions: FeatureTable | None = None
        if self.captions is not None:
            self.head_captions = self._read(
                f"{HEAD_CAPTIONS}.embeds.npy", lambda _: read_table(self.path, HEAD_CAPTIONS)
            )
            if len(self.head_captions) != len(self.captions):
                self._damaged(f"{HEAD_CAPTIONS}.*.npy", "its number of captions differs from captions.json")

    def _damaged(self, name: str, reason: str):
        raise ConfigError(f"{self.path}: damaged index ({name}: {reason}); rebuild it with vlret index build")

    def _open_vectors(self, embeddings: np.ndarray, nprobe: int, refine: int) -> _Vectors:
        faiss_index = self._read_faiss_index()
        indexed = len(embeddings) if faiss_index is None else faiss_index.ntotal
        if not (len(self.items) == len(embeddings) == indexed):
            self._damaged(
                "items.* / embeddings.npy / faiss.index",
                f"they disagree on the number of items ({len(self.items)}, {len(embeddings)}, {indexed})",
            )
        labels = None
        if faiss_index is not None and (self.path / FAISS_LABELS).is_file():
            labels = self._read(FAISS_LABELS, np.load)
            if len(labels) != len(embeddings) or (len(labels) > 1 and not (np.diff(labels) > 0).all()):
                self._damaged(FAISS_LABELS, "it must hold one ascending label per item")
        return _Vectors(embeddings, faiss_index, nprobe, refine, labels)

    def _read_faiss_index(self):
        """The FAISS index, its inverted lists left on disk when it was built so; None for an exact index
        built on disk (it is searched from the memory-mapped embeddings)."""
        import faiss  # here, not at the top: importing it costs a second for commands that never search

        storage = self.meta.get("storage", "memory")
        if storage == "memory":
            return self._read("faiss.index", lambda p: faiss.read_index(str(p)))
        if storage != "on_disk":
            self._damaged("index.json", f"storage must be memory or on_disk, not {storage!r}")
        if self.meta["choice"]["kind"] == "exact":
            return None
        return self._read("faiss.index", read_on_disk)

    def _read_captions(self) -> StringTable | list[dict] | None:
        """The indexed captions (text, item_id): memory-mapped columns, or ``captions.json`` in an index
        built before them; None when the index holds none."""
        if (self.path / "captions.json").is_file():
            return self._read("captions.json", _read_json)
        if not (self.path / "captions.text.utf8").is_file():
            return None
        return self._read(
            "captions.text.utf8", lambda p: StringTable.open(self.path, "captions", ("text", "item_id"), None)
        )

    def _read_items(self):
        """The items' ids and paths: memory-mapped columns, or ``items.json`` in an index built before them."""
        if (self.path / "items.json").is_file():
            return self._read("items.json", lambda p: StringTable.from_json(p, ITEM_FIELDS))
        names = [f"items.{field}.{part}" for field in ITEM_FIELDS for part in ("offsets.npy", "utf8")]
        for name in [*names, "items.id.order.npy"]:
            if not (self.path / name).is_file():
                self._damaged(name, "file not found")
        return self._read("items.id.utf8", lambda p: StringTable.open(self.path, "items", ITEM_FIELDS))

    def item_number(self, item_id: str) -> int:
        """The row of the item ``item_id`` (KeyError when the index has none)."""
        return self.items.number_of(item_id)

    def _read(self, name: str, reader):
        try:
            return reader(self.path / name)
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._damaged(name, reason)

    @property
    def version_key(self) -> str:
        """This version of the index: its version folder's name and its model's fingerprint (a rebuild
        publishes a new folder; indexes built before fingerprints were recorded say ``unrecorded``)."""
        return f"{self.path.name}:{self.meta.get('model_fingerprint', 'unrecorded')}"

    @property
    def model(self):
        if self._model is None:
            self._model = self._load_model(self.meta["model"])
        return self._model

    @property
    def first_stage_model(self):
        """The model whose embeddings the shortlist compares: the index's model unless one was named."""
        reference = (self.two_stage or {}).get("first_stage")
        if reference is None:
            return self.model
        if self._first_stage_model is None:
            self._first_stage_model = self._load_model(reference)
        return self._first_stage_model

    def _load_model(self, reference: str):
        """The model the index was built with; one whose saved folder is gone says how to go on."""
        from vlret.models import create_model
        from vlret.models.registry import is_model_reference

        stored = self.meta.get("model_folder")
        if stored is not None and reference == self.meta["model"] and (self.path / stored).is_dir():
            from vlret.models import load_model

            return load_model(self.path / stored).eval()  # a built-in model the build saved here
        if reference == "conse" and stored is None:
            # built before indexes kept their conse (and before conse centred by default): as it was made
            return create_model("conse", centre=False).eval()
        if "/" in reference and not is_model_reference(reference) and not Path(reference).exists():
            raise ConfigError(
                f"{self.path}: the index was built with the model saved in {reference}, which is gone (a "
                "newer training run in that folder may have replaced it). Rebuild the index with "
                "`vlret index build --model MODEL ...` on the same collection"
            )
        return create_model(reference, video=self.meta.get("video")).eval()

    @functools.cached_property
    def numpy_texts(self):
        """The torch-free text encoder of the index's model (:mod:`vlret.models.text_queries`), or None. It
        serves a one-stage index whose model is a saved folder (kept with the index, or named by its path)
        of a kind that has one, unless a model was given to the searcher."""
        if self.two_stage is not None or self._model is not None:
            return None
        reference, stored = self.meta["model"], self.meta.get("model_folder")
        if stored is not None and (self.path / stored).is_dir():
            return numpy_text_queries(self.path / stored)
        if (Path(reference) / MODEL_CONFIG_FILE).is_file():
            return numpy_text_queries(reference)
        return None

    # ----- embeddings -----------------------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Normalised shortlist embeddings ``[n, D]`` of query texts, in one model call."""
        encoder = self.numpy_texts
        if encoder is None:
            return self._encode_texts(self.first_stage_model, texts).embeds.numpy()
        _check_texts(texts)
        vectors = encoder.embed(list(texts))
        if not np.isfinite(vectors).all():
            raise VlretError(NON_FINITE_QUERY)
        return vectors

    def embed_text(self, text: str) -> np.ndarray:
        return self.embed_texts([text])[0]

    def embed_images(self, images: list[Image.Image | str | Path]) -> np.ndarray:
        """Normalised shortlist embeddings ``[n, D]`` of query images (PIL images or files), in one model call."""
        return self._encode_images(self.first_stage_model, images).embeds.numpy()

    def embed_image(self, image: Image.Image | str | Path) -> np.ndarray:
        return self.embed_images([image])[0]

    def text_queries(self, texts: list[str]) -> list[Query]:
        """Encoded query texts: what :meth:`image_hits` takes (one call per model)."""
        if self.numpy_texts is not None:
            return [Query("text", v) for v in self.embed_texts(texts)]
        return self._queries("text", texts, self._encode_texts)

    def image_queries(self, images: list[Image.Image | str | Path]) -> list[Query]:
        """Encoded query images: what :meth:`image_hits` and :meth:`caption_hits` take."""
        return self._queries("image", images, self._encode_images)

    def _queries(self, kind: str, inputs: list, encode) -> list[Query]:
        shortlist = encode(self.first_stage_model, inputs)
        vectors = shortlist.embeds.numpy()
        if self.two_stage is None:
            return [Query(kind, v) for v in vectors]
        head = shortlist if self.first_stage_model is self.model else encode(self.model, inputs)
        return [Query(kind, v, head.rows(n, n + 1)) for n, v in enumerate(vectors)]

    @_without_gradients
    def _encode_texts(self, model, texts: list[str]) -> Features:
        _check_texts(texts)
        return _checked(model.encode_texts(model.tokenize(list(texts))))

    @_without_gradients
    def _encode_images(self, model, images: list[Image.Image | str | Path]) -> Features:
        import torch

        from vlret.data.image_files import load_image, size_problem

        loaded = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        for im in loaded:
            problem = size_problem(*im.size)
            if problem:
                raise ConfigError(f"query image refused: {problem}")
        pixels = torch.from_numpy(np.stack([model.image_transform(im.convert("RGB")) for im in loaded]))
        return _checked(model.encode_images(pixels))

    # ----- queries --------------------------------------------------------------------------------------
    def image_hits(self, query: Query | np.ndarray, k: int) -> list[Hit]:
        """The ``k`` indexed images that best match a query (from :meth:`text_queries` or
        :meth:`image_queries`; a bare embedding is accepted by one-stage indexes)."""
        _check_k(k)
        query = self._as_query(query)
        if self.two_stage is None or query.kind == "image":
            scores, ids = self.images.search(query.vector, k)
            return [
                self._image_hit(r, s, i) for r, (s, i) in enumerate(zip(scores, ids, strict=True), start=1)
            ]
        first, ids = self._shortlist(self.images, query.vector, k)
        scores = self._head_score(query.features, self._head_rows(self.head_items, ids))[0]
        return [
            self._image_hit(r, scores[n], ids[n], first[n]) for r, n in enumerate(_best(scores, k), start=1)
        ]

    def caption_hits(self, query: Query | np.ndarray, k: int) -> list[Hit]:
        """The ``k`` indexed captions that best match a query (needs an index built from a dataset)."""
        _check_k(k)
        if self.captions is None:
            raise ConfigError(f"{self.path}: no captions were indexed (build from --data to search texts)")
        query = self._as_query(query)
        if self.two_stage is None or query.kind == "text":
            scores, ids = self.caption_vectors.search(query.vector, k)
            return [
                self._caption_hit(r, s, i) for r, (s, i) in enumerate(zip(scores, ids, strict=True), start=1)
            ]
        first, ids = self._shortlist(self.caption_vectors, query.vector, k)
        scores = self._head_score(self._head_rows(self.head_captions, ids), query.features)[:, 0]
        return [
            self._caption_hit(r, scores[n], ids[n], first[n]) for r, n in enumerate(_best(scores, k), start=1)
        ]

    @_without_gradients
    def _head_score(self, texts: Features, items: Features) -> torch.Tensor:
        return self.model.head.score(texts, items)

    def _as_query(self, query: Query | np.ndarray) -> Query:
        if isinstance(query, Query):
            return query
        if self.two_stage is not None:
            raise ConfigError(
                f"{self.path}: a two-stage index re-scores with the model's head; pass a query from "
                "text_queries() or image_queries(), not a bare embedding"
            )
        return Query("text", np.asarray(query))

    def _shortlist(self, vectors: _Vectors, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first stage: candidates by cosine, in ascending index order (so head ties go to the lower)."""
        first, ids = vectors.search(vector, max(self.shortlist, k))
        order = np.argsort(ids, kind="stable")
        return first[order], ids[order]

    def _head_rows(self, table: FeatureTable, ids: np.ndarray) -> Features:
        return table.take(ids).to(self.model.device)

    def _image_hit(self, rank: int, score, number, first=None) -> Hit:
        item = self.items[int(number)]
        first = None if first is None else float(first)
        return Hit(rank, float(score), item["id"], path=item["path"], first_stage_score=first)

    def _caption_hit(self, rank: int, score, number, first=None) -> Hit:
        caption = self.captions[int(number)]
        first = None if first is None else float(first)
        return Hit(rank, float(score), caption["item_id"], text=caption["text"], first_stage_score=first)

    def unknown_words(self, text: str) -> list[str]:
        """The words of a query text that the index's model (or its first stage) does not know: a
        word-level model reads each as one unknown token, so a query of them finds nothing in particular."""
        if self.numpy_texts is not None:
            return self.numpy_texts.unknown_words(text)
        models = [self.first_stage_model] + ([self.model] if self.two_stage is not None else [])
        return list(dict.fromkeys(w for m in models for w in m.unknown_query_words(text)))

    def text_to_image(self, text: str, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self.image_hits(self.text_queries([text])[0], k)

    def image_to_image(self, image, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self.image_hits(self.image_queries([image])[0], k)

    def image_to_text(self, image, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self.caption_hits(self.image_queries([image])[0], k)

    def text_to_text(self, text: str, k: int = 10) -> list[Hit]:
        _check_k(k)
        return self.caption_hits(self.text_queries([text])[0], k)

    def media_path(self, item_path: str) -> Path:
        """The real path of an item's file, which must lie inside the index's media root: an item replaced
        by a symbolic link (or a path with ``..``) that leads elsewhere is refused, so nothing outside the
        collection is ever read or served on its behalf."""
        real = (self.media_root / item_path).resolve()
        if not real.is_relative_to(self.media_root.resolve()):
            raise ConfigError(
                f"{item_path}: its file lies outside the indexed collection ({self.media_root})"
            )
        return real
