"""A FastAPI app that serves an index: search by text and by uploaded image, thumbnails, health, the page;
with learnt prompts (``--prompts``), search by class name and the classes of an uploaded image. Video items
get a poster frame (the middle one) as their thumbnail and are played from ``/media/{item}``, which answers
HTTP range requests (206 Partial Content), as a browser's video element asks for them.

Safety: items are addressed by their number in the index, never by a path, so nothing outside the indexed
collection can be served; uploads are limited in bytes and in declared pixels and must be one of a few image
formats (see :mod:`vlret.serve.uploads`); ``k`` is bounded; bad requests get a 4xx answer with a reason, and
error messages carry no object representations or absolute paths.

Concurrency: the model runs on one thread of its own. Concurrent queries are grouped into one model call
(:mod:`vlret.serve.batching`), so throughput grows with the number of clients instead of queueing behind a
lock. VISA re-ranking runs on separate threads under a per-request time budget: plain searches never wait
for a VISA backend, and a slow or failing backend answers the base ranking with a ``warning``, never a 500.
The API documentation (``/docs``, ``/redoc``) is served from local files, so it works offline.
"""

from __future__ import annotations

import asyncio
import io
import logging
import mimetypes
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import torch
from fastapi import File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image

from vlret.data.image_files import load_image
from vlret.data.tar_members import read_member, tar_member
from vlret.data.video import FrameSampling, is_video_path, load_video_frames
from vlret.errors import ConfigError, DataError, VlretError
from vlret.index.class_search import ClassSearch
from vlret.index.qdrant import QdrantVectors, default_collection
from vlret.index.search import Hit, Searcher
from vlret.serve.batching import MicroBatcher
from vlret.serve.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, read_upload
from vlret.serve.versions import CHECK_EVERY, VersionFollower

MAX_K = 100
THUMBNAIL_SIZES = (64, 128, 256)
VISA_TIMEOUT = 60.0  # seconds one request may spend on VISA before the base ranking is answered
log = logging.getLogger("vlret.serve")


def public_model_name(reference: str, model_name: str, origin: str = "") -> str:
    """How ``/health`` and the page name the model: a hub id as is, a built-in name with where its weights
    come from (``conse (pretrained:efficientnet-lite0+minilm)``), a folder by its last two parts (never an
    absolute path)."""
    if reference.startswith("hf:") and not Path(reference[3:]).is_absolute():
        return reference
    if "/" not in reference and ":" not in reference:  # a built-in name, not a folder
        return f"{reference} ({origin})" if origin else reference
    folder = Path(reference.removeprefix("hf:"))
    return f"{model_name.split(':')[0]} ({folder.parent.name}/{folder.name})"


@dataclass
class IndexVersion:
    """One version of the index, opened: its searcher (model loaded) and its class search, if any."""

    searcher: Searcher
    classes: ClassSearch | None
    model_name: str

    @property
    def name(self) -> str:
        return self.searcher.path.name

    @property
    def model_warning(self) -> str | None:
        """What the index build said about its model (untrained projections), if anything."""
        return redacted("; ".join(self.searcher.meta.get("warnings", []))) or None


def open_version(
    folder: Path, prompts: str | Path | None = None, item_vectors: Callable | None = None
) -> IndexVersion:
    """Open an index version with its models loaded, ready to answer its first query at once;
    ``item_vectors`` as :class:`~vlret.index.search.Searcher` takes it."""
    searcher = Searcher(folder, item_vectors=item_vectors)
    model_name = public_model_name(searcher.meta["model"], searcher.model.name, searcher.model.origin)
    searcher.first_stage_model  # noqa: B018 - loaded here, not on the first query
    classes = None if prompts is None else ClassSearch(searcher, prompts)
    return IndexVersion(searcher, classes, model_name)


class SearchService:
    """The index versions being served, the model thread and query batchers, and the optional VISA
    re-ranker."""

    def __init__(
        self,
        index: str | Path,
        visa_config: str | Path | None = None,
        visa_cache: str | Path | None = None,
        visa_timeout: float = VISA_TIMEOUT,
        max_batch: int = 32,
        batch_window: float = 0.001,
        prompts: str | Path | None = None,
        check_every: float = CHECK_EVERY,
        item_vectors: Callable | None = None,
    ):
        if not (Path(index) / "index.json").is_file():
            Searcher(index)  # names the problem
        opener = partial(open_version, prompts=prompts, item_vectors=item_vectors)
        self.versions = VersionFollower(index, opener, lambda v: v.name, check_every)
        # One thread runs the model for every query, text or image: torch keeps a pool of compute threads
        # per calling thread, and two pools on two cores would only get in each other's way.
        self.queries = MicroBatcher(self._hits, max_batch, batch_window, name="vlret-model")
        self.decode_slots = threading.BoundedSemaphore(2)  # decoded uploads held in memory at once
        self.visa = None
        self.visa_timeout = visa_timeout
        if visa_config is not None:
            from vlret.rerank.visa.config import load_visa_config
            from vlret.rerank.visa.pipeline import Roles, Visa

            config = load_visa_config(visa_config)
            first = self.versions.current.searcher.path
            cache = Path(visa_cache) if visa_cache else Path(str(first) + ".visa-cache")
            self.visa = Visa(config, Roles.from_config(config), cache)
            self.visa_threads = ThreadPoolExecutor(4, thread_name_prefix="vlret-visa")

    def close(self) -> None:
        """Stop the batchers' threads (and VISA's, without waiting for jobs that outlived their request)."""
        self.queries.close()
        if self.visa is not None:
            self.visa_threads.shutdown(wait=False, cancel_futures=True)

    @property
    def searcher(self) -> Searcher:
        """The current version's searcher."""
        return self.versions.current.searcher

    # ----- model calls (on a batcher's thread, one group of requests at a time) -------------------------
    def _hits(self, requests: list[tuple[IndexVersion, str, object, int]]) -> list[list]:
        """Answers for a group of ``(version, kind, query, k)`` requests: each version's share is answered
        by that version (a group may straddle a swap)."""
        answers: dict[int, list] = {}
        for version in {id(r[0]): r[0] for r in requests}.values():
            members = [n for n, r in enumerate(requests) if r[0] is version]
            share = _answers(version, [requests[n][1:] for n in members])
            answers.update(zip(members, share, strict=True))
        return [answers[n] for n in range(len(requests))]

    def decode(self, upload: UploadFile, max_bytes: int, max_pixels: int) -> Image.Image:
        with self.decode_slots:
            return read_upload(upload, max_bytes, max_pixels)

    # ----- results --------------------------------------------------------------------------------------
    def hit_json(self, hit: Hit, version: IndexVersion) -> dict:
        """A hit as the API answers it, its links naming the version that found it."""
        number = version.searcher.item_number(hit.id)
        tag = f"?version={version.name}"
        out = {**hit.as_dict(), "item": number, "thumbnail": f"/thumbnail/{number}{tag}"}
        if is_video_path(version.searcher.items[number]["path"]):
            out["video"] = f"/media/{number}{tag}"
        return out

    def _rerank(self, text: str, hits: list[Hit], version: IndexVersion) -> list[dict]:
        from vlret.rerank.visa.pipeline import Candidate

        candidates = [Candidate(h.id, version.searcher.media_path(h.path), h.score) for h in hits]
        out = self.visa.rerank(text, candidates)
        by_id = {h.id: h for h in hits}
        return [
            {
                **self.hit_json(Hit(r, fused, by_id[i].id, path=by_id[i].path), version),
                "base_score": base,
                "text_score": txt,
            }
            for r, (i, fused, base, txt) in enumerate(
                zip(out.item_ids, out.fused, out.base, out.text, strict=True), start=1
            )
        ]

    async def rerank(
        self, text: str, hits: list[Hit], version: IndexVersion
    ) -> tuple[list[dict] | None, str | None]:
        """``(re-ranked results, None)``, or ``(None, warning)`` when VISA failed or ran out of time."""
        job = asyncio.get_running_loop().run_in_executor(self.visa_threads, self._rerank, text, hits, version)
        # A job that outlives its request still finishes (and fills the VISA cache); its error is logged.
        job.add_done_callback(_log_late_failure)
        try:
            return await asyncio.wait_for(asyncio.shield(job), self.visa_timeout), None
        except TimeoutError:
            return None, (
                f"VISA re-ranking did not finish within {self.visa_timeout:g} s; showing the base ranking "
                "(finished steps are cached, so asking again is faster)"
            )
        except VlretError as exc:
            log.warning("VISA re-ranking failed: %s", exc)
            return None, f"VISA re-ranking failed: {redacted(str(exc))}; showing the base ranking"
        except Exception as exc:  # noqa: BLE001 - a backend's own bug must not become a 500
            log.exception("VISA re-ranking failed")
            return None, f"VISA re-ranking failed ({type(exc).__name__}); showing the base ranking"


def _answers(version: IndexVersion, requests: list[tuple[str, object, int]]) -> list[list]:
    """Answers of one version for ``(kind, query, k)`` requests, one encoder call per input kind: ``text``
    and ``image`` give hits, ``captions`` (an image) the indexed captions that match it, ``class`` (a class
    name) hits by its learnt prompt, ``classify`` (an image) its ``k`` likeliest classes."""
    searcher = version.searcher
    inputs = {"text": ("text",), "image": ("image", "captions", "classify")}
    queries: dict[int, object] = {}
    for kind, encode in (("text", searcher.text_queries), ("image", searcher.image_queries)):
        members = [n for n, (of, _, _) in enumerate(requests) if of in inputs[kind]]
        if members:
            queries.update(zip(members, encode([requests[n][1] for n in members]), strict=True))
    answers = []
    for n, (kind, query, k) in enumerate(requests):
        if kind == "class":
            answers.append(version.classes.class_hits(query, k))
        elif kind == "classify":
            answers.append(version.classes.classify_features(queries[n].vector[None], k)[0])
        elif kind == "captions":
            answers.append(searcher.caption_hits(queries[n], k))
        else:
            answers.append(searcher.image_hits(queries[n], k))
    return answers


def _log_late_failure(job: asyncio.Future) -> None:
    if not job.cancelled() and job.exception() is not None:
        log.warning("a VISA job failed after its request: %s", job.exception())


def _poster(path: Path) -> Image.Image:
    """A clip's middle frame."""
    try:
        return load_video_frames(path, FrameSampling(frames=1))[0]
    except DataError as exc:
        raise OSError(exc.problem) from None


def _still(path: Path) -> Image.Image:
    """An image file, or an image inside a tar shard."""
    if path.is_file():
        return Image.open(path)
    try:
        return load_image(path)
    except DataError as exc:
        raise OSError(exc.problem) from None


def _thumbnail_png(path: Path, size: int) -> bytes:
    with _poster(path) if is_video_path(path) else _still(path) as img:
        img = img.convert("RGB")
        small = max(img.size) < size
        img.thumbnail((size, size), Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC)
        if small:  # tiny images are enlarged, pixel-exact
            scale = size / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue()


_ADDRESS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])(?:/[^\s/'\"<>:,;()]+){2,}/?")


def redacted(message: str) -> str:
    """``message`` as a client may read it: server addresses and absolute paths replaced, so an error
    says what failed without the server's file system or internal URLs (the log keeps them whole)."""
    return _ABSOLUTE_PATH.sub("<path>", _ADDRESS.sub("<address>", message))


#: the most characters of a refused value a 422 answer repeats
ECHO_CHARS = 80


def _short_input(error: dict) -> dict:
    """One validation error as JSON, its ``input`` cut to :data:`ECHO_CHARS` characters."""
    error = jsonable_encoder(error)
    value = error.get("input")
    if isinstance(value, str) and len(value) > ECHO_CHARS:
        error["input"] = f"{value[:ECHO_CHARS]}… ({len(value)} characters)"
    elif not isinstance(value, (str, int, float, bool, type(None))):
        error.pop("input", None)  # a form or a file: not repeated
    return error


def create_app(
    index: str | Path,
    visa_config: str | Path | None = None,
    visa_cache: str | Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_k: int = MAX_K,
    max_upload_pixels: int = MAX_UPLOAD_PIXELS,
    visa_timeout: float = VISA_TIMEOUT,
    prompts: str | Path | None = None,
    check_every: float = CHECK_EVERY,
    qdrant: str | None = None,
    qdrant_collection: str | None = None,
) -> FastAPIOffline:
    """The app for one index; ``visa_config`` (a VISA YAML) enables the re-ranking toggle, ``prompts`` (a
    ``RUN/prompts`` folder of ``vlret prompts train``) search by class and image classification. The app
    moves to a newer version of the index within ``check_every`` seconds of its publication
    (:mod:`vlret.serve.versions`). ``qdrant`` (a server URL or a local folder) searches the items in that
    Qdrant collection (``qdrant_collection``, by default the index's name) instead of the index's FAISS
    vectors."""
    vectors = None
    if qdrant is not None:
        vectors = partial(QdrantVectors, qdrant, qdrant_collection or default_collection(index))
    service = SearchService(
        index,
        visa_config,
        visa_cache,
        visa_timeout,
        prompts=prompts,
        check_every=check_every,
        item_vectors=vectors,
    )

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPIOffline(
        title="vlret search",
        version="1",
        description="Text and image search over a vlret index.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def refused(_request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, with each refused value cut short: a 100 KB query is not sent back whole."""
        return JSONResponse(status_code=422, content={"detail": [_short_input(e) for e in exc.errors()]})

    def version_info(version: IndexVersion) -> dict:
        searcher = version.searcher
        return {
            "version": version.name,  # the index version this replica serves
            "items": len(searcher.items),
            # when this version's collection last changed: its update, or its build
            "updated": searcher.meta.get("updated") or searcher.meta.get("created"),
            "captions": searcher.meta["captions"],
            "model": version.model_name,
            "index": searcher.meta["choice"]["kind"],
            "storage": searcher.meta.get("storage", "memory"),
            # two-stage indexes: which head re-scores how many shortlisted candidates
            "head": None if searcher.two_stage is None else searcher.two_stage["head"]["name"],
            "shortlist": None if searcher.two_stage is None else searcher.shortlist,
            "classes": None if version.classes is None else len(version.classes.classnames),
        }

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            **version_info(service.versions.snapshot()),
            "replica": os.getpid(),  # which process answered (vlret serve --workers N)
            "threads": torch.get_num_threads(),  # this replica's share of the cores
            # a newer version that could not be opened
            "reload_error": None
            if service.versions.last_error is None
            else redacted(service.versions.last_error),
            "warnings": [redacted(w) for w in service.versions.current.searcher.meta.get("warnings", [])],
            "visa": service.visa is not None,
            "visa_timeout_s": service.visa_timeout if service.visa is not None else None,
            "max_k": max_k,
            "max_upload_bytes": max_upload_bytes,
            "max_upload_pixels": max_upload_pixels,
        }

    @app.post("/api/reload")
    async def reload() -> dict:
        """Move this replica to the index link's current version now (opening it first), instead of at the
        next periodic check; requests keep being answered meanwhile."""
        version = await run_in_threadpool(service.versions.reload)
        error = service.versions.last_error
        return {"version": version.name, "reload_error": None if error is None else redacted(error)}

    def answer(query: str | None, k: int, results: list[dict], started: float, **extra) -> JSONResponse:
        elapsed = round(asyncio.get_running_loop().time() - started, 4)
        body = {"query": query, "k": k, "visa": False, **extra, "results": results, "seconds": elapsed}
        # Already plain JSON types: answered as is, without FastAPI's generic (and slower) re-encoding.
        return JSONResponse(body)

    @app.get("/api/search")
    async def search_text(
        q: str = Query(..., min_length=1, max_length=1000),
        k: int = Query(10, ge=1, le=max_k),
        visa: bool = False,
    ) -> JSONResponse:
        if not q.strip():
            raise HTTPException(422, "the query text is blank")
        if visa and service.visa is None:
            raise HTTPException(
                400, "VISA re-ranking is not enabled on this server (start it with --visa-config)"
            )
        started = asyncio.get_running_loop().time()
        version = service.versions.snapshot()
        fetch = max(k, service.visa.config.k) if visa else k
        hits = await _model_call(service.queries, (version, "text", q, fetch))
        extra = {"version": version.name}
        unknown = version.searcher.unknown_words(q)
        if unknown:
            extra["unknown_words"] = unknown
        if version.model_warning:
            extra["model_warning"] = version.model_warning
        results = [service.hit_json(h, version) for h in hits[:k]]
        if visa:
            reranked, warning = await service.rerank(q, hits, version)
            if reranked is None:
                extra["warning"] = warning
            else:
                extra["visa"], results = True, reranked[:k]
        return answer(q, k, results, started, **extra)

    @app.post("/api/search/image")
    async def search_image(
        file: Annotated[UploadFile, File()],
        k: int = Query(10, ge=1, le=max_k),
        target: Literal["images", "captions"] = "images",
    ) -> JSONResponse:
        """Images like the uploaded one, or (``target=captions``, an index built from a dataset) the
        indexed captions that describe it, each with its image's thumbnail."""
        version = service.versions.snapshot()
        if target == "captions" and version.searcher.captions is None:
            raise HTTPException(
                400, "this index holds no captions (build it from a dataset, --data, to search captions)"
            )
        image = await run_in_threadpool(service.decode, file, max_upload_bytes, max_upload_pixels)
        started = asyncio.get_running_loop().time()
        kind = "image" if target == "images" else "captions"
        hits = await _model_call(service.queries, (version, kind, image, k))
        results = [service.hit_json(h, version) for h in hits]
        return answer(file.filename, k, results, started, version=version.name, target=target)

    def with_classes() -> IndexVersion:
        version = service.versions.snapshot()
        if version.classes is None:
            raise HTTPException(404, "no learnt prompts on this server (start it with --prompts RUN/prompts)")
        return version

    @app.get("/api/classes")
    def classes() -> dict:
        return {"classes": with_classes().classes.classnames}

    @app.get("/api/search/class")
    async def search_class(
        name: str = Query(..., min_length=1, max_length=200), k: int = Query(10, ge=1, le=max_k)
    ) -> JSONResponse:
        version = with_classes()
        if name not in version.classes.classnames:
            raise HTTPException(404, f"no class {name!r}; GET /api/classes lists them")
        started = asyncio.get_running_loop().time()
        hits = await _model_call(service.queries, (version, "class", name, k))
        results = [service.hit_json(h, version) for h in hits]
        return answer(name, k, results, started, version=version.name)

    @app.post("/api/classify")
    async def classify(file: Annotated[UploadFile, File()], k: int = Query(5, ge=1, le=max_k)) -> dict:
        version = with_classes()
        image = await run_in_threadpool(service.decode, file, max_upload_bytes, max_upload_pixels)
        top = await _model_call(service.queries, (version, "classify", image, k))
        return {"query": file.filename, "classes": [{"name": n, "probability": p} for n, p in top]}

    def item_file(item: int, version_name: str | None) -> Path:
        """The media file of item ``item`` of the named version (the current one by default)."""
        version = service.versions.find(version_name)
        if version is None:
            raise HTTPException(
                410, f"index version {version_name!r} is no longer served; search again for current links"
            )
        items = version.searcher.items
        if not 0 <= item < len(items):
            raise HTTPException(404, f"no item {item}; the index has {len(items)}")
        try:
            return version.searcher.media_path(items[item]["path"])
        except ConfigError:
            raise HTTPException(404, "the item's file lies outside the indexed collection") from None

    @app.get("/thumbnail/{item}")
    def thumbnail(item: int, size: int = Query(128), version: str | None = None) -> Response:
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(422, f"size must be one of {THUMBNAIL_SIZES}")
        path = item_file(item, version)
        try:
            png = _thumbnail_png(path, size)
        except (OSError, ValueError, Image.DecompressionBombError):
            raise HTTPException(404, "the item's file is missing or unreadable") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/{item}")
    def media(item: int, version: str | None = None) -> Response:
        path = item_file(item, version)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Cache-Control": "max-age=3600"}
        if path.is_file():
            return FileResponse(path, media_type=kind, headers=headers)
        inside = tar_member(path)
        if inside is None:
            raise HTTPException(404, "the item's file is missing")
        try:
            return Response(read_member(*inside), media_type=kind, headers=headers)
        except DataError:
            raise HTTPException(404, "the item's file is missing from its shard") from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vlret.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    return app


async def _model_call(batcher: MicroBatcher, request) -> list[Hit]:
    try:
        return await batcher(request)
    except VlretError as exc:
        raise HTTPException(500, f"the model failed on this query: {exc}") from None
