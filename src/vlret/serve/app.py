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
import json
import logging
import mimetypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image

from vlret.data.video import FrameSampling, is_video_path, load_video_frames
from vlret.errors import ConfigError, DataError, VlretError
from vlret.index.search import Hit, Searcher
from vlret.serve.batching import MicroBatcher
from vlret.serve.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, read_upload

MAX_K = 100
THUMBNAIL_SIZES = (64, 128, 256)
VISA_TIMEOUT = 60.0  # seconds one request may spend on VISA before the base ranking is answered
log = logging.getLogger("vlret.serve")


def public_model_name(reference: str, model_name: str) -> str:
    """How ``/health`` names the model: a hub id as is, a folder by its last two parts (no absolute path)."""
    if reference.startswith("hf:") and not Path(reference[3:]).is_absolute():
        return reference
    folder = Path(reference.removeprefix("hf:"))
    return f"{model_name.split(':')[0]} ({folder.parent.name}/{folder.name})"


class SearchService:
    """The searcher, its model thread and query batchers, and the optional VISA re-ranker."""

    def __init__(
        self,
        index: str | Path,
        visa_config: str | Path | None = None,
        visa_cache: str | Path | None = None,
        visa_timeout: float = VISA_TIMEOUT,
        max_batch: int = 32,
        batch_window: float = 0.001,
        prompts: str | Path | None = None,
    ):
        self.searcher = Searcher(index)
        self.classes = None
        if prompts is not None:
            from vlret.index.class_search import ClassSearch

            self.classes = ClassSearch(self.searcher, prompts)
        self.model_name = public_model_name(self.searcher.meta["model"], self.searcher.model.name)
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
            cache = Path(visa_cache) if visa_cache else Path(str(self.searcher.path) + ".visa-cache")
            self.visa = Visa(config, Roles.from_config(config), cache)
            self.visa_threads = ThreadPoolExecutor(4, thread_name_prefix="vlret-visa")

    def close(self) -> None:
        """Stop the batchers' threads (and VISA's, without waiting for jobs that outlived their request)."""
        self.queries.close()
        if self.visa is not None:
            self.visa_threads.shutdown(wait=False, cancel_futures=True)

    # ----- model calls (on a batcher's thread, one group of requests at a time) -------------------------
    def _hits(self, requests: list[tuple[str, object, int]]) -> list[list]:
        """Answers for a group of ``(kind, query, k)`` requests, one encoder call per input kind: ``text``
        and ``image`` give hits, ``class`` (a class name) hits by its learnt prompt, ``classify`` (an image)
        its ``k`` likeliest classes."""
        inputs = {"text": ("text",), "image": ("image", "classify")}
        queries: dict[int, object] = {}
        for kind, encode in (("text", self.searcher.text_queries), ("image", self.searcher.image_queries)):
            members = [n for n, (of, _, _) in enumerate(requests) if of in inputs[kind]]
            if members:
                queries.update(zip(members, encode([requests[n][1] for n in members]), strict=True))
        answers = []
        for n, (kind, query, k) in enumerate(requests):
            if kind == "class":
                answers.append(self.classes.class_hits(query, k))
            elif kind == "classify":
                answers.append(self.classes.classify_features(queries[n].vector[None], k)[0])
            else:
                answers.append(self.searcher.image_hits(queries[n], k))
        return answers

    def decode(self, upload: UploadFile, max_bytes: int, max_pixels: int) -> Image.Image:
        with self.decode_slots:
            return read_upload(upload, max_bytes, max_pixels)

    # ----- results --------------------------------------------------------------------------------------
    def hit_json(self, hit: Hit) -> dict:
        number = self.searcher.item_number(hit.id)
        out = {**hit.as_dict(), "item": number, "thumbnail": f"/thumbnail/{number}"}
        if is_video_path(self.searcher.items[number]["path"]):
            out["video"] = f"/media/{number}"
        return out

    def _rerank(self, text: str, hits: list[Hit]) -> list[dict]:
        from vlret.rerank.visa.pipeline import Candidate

        candidates = [Candidate(h.id, self.searcher.media_path(h.path), h.score) for h in hits]
        out = self.visa.rerank(text, candidates)
        by_id = {h.id: h for h in hits}
        return [
            {
                **self.hit_json(Hit(r, fused, by_id[i].id, path=by_id[i].path)),
                "base_score": base,
                "text_score": txt,
            }
            for r, (i, fused, base, txt) in enumerate(
                zip(out.item_ids, out.fused, out.base, out.text, strict=True), start=1
            )
        ]

    async def rerank(self, text: str, hits: list[Hit]) -> tuple[list[dict] | None, str | None]:
        """``(re-ranked results, None)``, or ``(None, warning)`` when VISA failed or ran out of time."""
        job = asyncio.get_running_loop().run_in_executor(self.visa_threads, self._rerank, text, hits)
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
            return None, f"VISA re-ranking failed: {exc}; showing the base ranking"
        except Exception as exc:  # noqa: BLE001 - a backend's own bug must not become a 500
            log.exception("VISA re-ranking failed")
            return None, f"VISA re-ranking failed ({type(exc).__name__}); showing the base ranking"


def _log_late_failure(job: asyncio.Future) -> None:
    if not job.cancelled() and job.exception() is not None:
        log.warning("a VISA job failed after its request: %s", job.exception())


def _poster(path: Path) -> Image.Image:
    """A clip's middle frame."""
    try:
        return load_video_frames(path, FrameSampling(frames=1))[0]
    except DataError as exc:
        raise OSError(exc.problem) from None


def _thumbnail_png(path: Path, size: int) -> bytes:
    with _poster(path) if is_video_path(path) else Image.open(path) as img:
        img = img.convert("RGB")
        small = max(img.size) < size
        img.thumbnail((size, size), Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC)
        if small:  # tiny images are enlarged, pixel-exact
            scale = size / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue()


SETTINGS_VARIABLE = "VLRET_SERVE_SETTINGS"  # create_app's arguments, as JSON, for worker processes


def app_from_environment() -> FastAPIOffline:
    """The app of ``vlret serve --workers N``: each worker process builds it from the settings the command
    put in the environment (uvicorn's factory)."""
    return create_app(**json.loads(os.environ[SETTINGS_VARIABLE]))


def create_app(
    index: str | Path,
    visa_config: str | Path | None = None,
    visa_cache: str | Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_k: int = MAX_K,
    max_upload_pixels: int = MAX_UPLOAD_PIXELS,
    visa_timeout: float = VISA_TIMEOUT,
    prompts: str | Path | None = None,
) -> FastAPIOffline:
    """The app for one index; ``visa_config`` (a VISA YAML) enables the re-ranking toggle, ``prompts`` (a
    ``RUN/prompts`` folder of ``vlret prompts train``) search by class and image classification."""
    service = SearchService(index, visa_config, visa_cache, visa_timeout, prompts=prompts)
    searcher = service.searcher

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

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "version": searcher.path.name,  # the index version this replica serves
            "replica": os.getpid(),  # which process answered (vlret serve --workers N)
            "items": len(searcher.items),
            "captions": searcher.meta["captions"],
            "model": service.model_name,
            "index": searcher.meta["choice"]["kind"],
            # two-stage indexes: which head re-scores how many shortlisted candidates
            "head": None if searcher.two_stage is None else searcher.two_stage["head"]["name"],
            "shortlist": None if searcher.two_stage is None else searcher.shortlist,
            "visa": service.visa is not None,
            "visa_timeout_s": service.visa_timeout if service.visa is not None else None,
            "classes": None if service.classes is None else len(service.classes.classnames),
            "max_k": max_k,
            "max_upload_bytes": max_upload_bytes,
            "max_upload_pixels": max_upload_pixels,
        }

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
        fetch = max(k, service.visa.config.k) if visa else k
        hits = await _model_call(service.queries, ("text", q, fetch))
        body = {"query": q, "k": k, "visa": False}
        results = [service.hit_json(h) for h in hits[:k]]
        if visa:
            reranked, warning = await service.rerank(q, hits)
            if reranked is None:
                body["warning"] = warning
            else:
                body["visa"], results = True, reranked[:k]
        elapsed = asyncio.get_running_loop().time() - started
        # Already plain JSON types: answered as is, without FastAPI's generic (and slower) re-encoding.
        return JSONResponse({**body, "results": results, "seconds": round(elapsed, 4)})

    @app.post("/api/search/image")
    async def search_image(
        file: Annotated[UploadFile, File()], k: int = Query(10, ge=1, le=max_k)
    ) -> JSONResponse:
        image = await run_in_threadpool(service.decode, file, max_upload_bytes, max_upload_pixels)
        started = asyncio.get_running_loop().time()
        hits = await _model_call(service.queries, ("image", image, k))
        return JSONResponse(
            {
                "query": file.filename,
                "k": k,
                "visa": False,
                "results": [service.hit_json(h) for h in hits],
                "seconds": round(asyncio.get_running_loop().time() - started, 4),
            }
        )

    def class_search() -> object:
        if service.classes is None:
            raise HTTPException(404, "no learnt prompts on this server (start it with --prompts RUN/prompts)")
        return service.classes

    @app.get("/api/classes")
    def classes() -> dict:
        return {"classes": class_search().classnames}

    @app.get("/api/search/class")
    async def search_class(
        name: str = Query(..., min_length=1, max_length=200), k: int = Query(10, ge=1, le=max_k)
    ) -> JSONResponse:
        if name not in class_search().classnames:
            raise HTTPException(404, f"no class {name!r}; GET /api/classes lists them")
        started = asyncio.get_running_loop().time()
        hits = await _model_call(service.queries, ("class", name, k))
        return JSONResponse(
            {
                "query": name,
                "k": k,
                "visa": False,
                "results": [service.hit_json(h) for h in hits],
                "seconds": round(asyncio.get_running_loop().time() - started, 4),
            }
        )

    @app.post("/api/classify")
    async def classify(file: Annotated[UploadFile, File()], k: int = Query(5, ge=1, le=max_k)) -> dict:
        class_search()
        image = await run_in_threadpool(service.decode, file, max_upload_bytes, max_upload_pixels)
        top = await _model_call(service.queries, ("classify", image, k))
        return {"query": file.filename, "classes": [{"name": n, "probability": p} for n, p in top]}

    @app.get("/thumbnail/{item}")
    def thumbnail(item: int, size: int = Query(128)) -> Response:
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(422, f"size must be one of {THUMBNAIL_SIZES}")
        if not 0 <= item < len(searcher.items):
            raise HTTPException(404, f"no item {item}; the index has {len(searcher.items)}")
        try:
            png = _thumbnail_png(searcher.media_path(searcher.items[item]["path"]), size)
        except (OSError, ValueError, Image.DecompressionBombError, ConfigError):
            raise HTTPException(
                404, "the item's file is missing, unreadable or outside the collection"
            ) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/{item}")
    def media(item: int) -> Response:
        if not 0 <= item < len(searcher.items):
            raise HTTPException(404, f"no item {item}; the index has {len(searcher.items)}")
        try:
            path = searcher.media_path(searcher.items[item]["path"])
        except ConfigError:
            raise HTTPException(404, "the item's file lies outside the indexed collection") from None
        if not path.is_file():
            raise HTTPException(404, "the item's file is missing")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vlret.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    return app


async def _model_call(batcher: MicroBatcher, request) -> list[Hit]:
    try:
        return await batcher(request)
    except VlretError as exc:
        raise HTTPException(500, f"the model failed on this query: {exc}") from None
