"""A FastAPI app that serves an index: search by text and by uploaded image, thumbnails, health, the page.

Safety: items are addressed by their number in the index, never by a path, so nothing outside the indexed
collection can be served; uploads are limited in size and must decode as images; ``k`` is bounded; bad
requests get a 4xx answer with a reason. Model calls run under a lock (one model, shared by the worker
threads FastAPI runs synchronous endpoints in).
"""

from __future__ import annotations

import io
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError

from vlret.index.search import Hit, Searcher

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_K = 100
THUMBNAIL_SIZES = (64, 128, 256)


class SearchService:
    """The searcher, the optional VISA re-ranker and the lock around model calls."""

    def __init__(
        self, index: str | Path, visa_config: str | Path | None = None, visa_cache: str | Path | None = None
    ):
        self.searcher = Searcher(index)
        self.lock = threading.Lock()
        self.visa = None
        if visa_config is not None:
            from vlret.rerank.visa.config import load_visa_config
            from vlret.rerank.visa.pipeline import Roles, Visa

            config = load_visa_config(visa_config)
            cache = Path(visa_cache) if visa_cache else Path(str(self.searcher.path) + ".visa-cache")
            self.visa = Visa(config, Roles.from_config(config), cache)

    def hit_json(self, hit: Hit) -> dict:
        number = self.searcher.item_numbers[hit.id]
        return {**hit.as_dict(), "item": number, "thumbnail": f"/thumbnail/{number}"}

    def rerank(self, text: str, hits: list[Hit]) -> list[dict]:
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


def _read_upload(upload: UploadFile, limit: int) -> Image.Image:
    if upload.content_type and not upload.content_type.startswith("image/"):
        raise HTTPException(415, f"expected an image upload, got {upload.content_type}")
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload larger than {limit} bytes")
    if not data:
        raise HTTPException(400, "empty upload")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HTTPException(400, f"the upload is not a readable image ({exc})") from None


def create_app(
    index: str | Path,
    visa_config: str | Path | None = None,
    visa_cache: str | Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_k: int = MAX_K,
) -> FastAPI:
    """The app for one index; ``visa_config`` (a VISA YAML) enables the re-ranking toggle."""
    service = SearchService(index, visa_config, visa_cache)
    searcher = service.searcher
    app = FastAPI(title="vlret search", version="1", description="Text and image search over a vlret index.")
    app.state.service = service

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "items": len(searcher.items),
            "captions": searcher.meta["captions"],
            "model": searcher.meta["model"],
            "index": searcher.meta["choice"]["kind"],
            "visa": service.visa is not None,
            "max_k": max_k,
        }

    @app.get("/api/search")
    def search_text(
        q: str = Query(..., min_length=1, max_length=1000),
        k: int = Query(10, ge=1, le=max_k),
        visa: bool = False,
    ) -> dict:
        if not q.strip():
            raise HTTPException(422, "the query text is blank")
        if visa and service.visa is None:
            raise HTTPException(
                400, "VISA re-ranking is not enabled on this server (start it with --visa-config)"
            )
        started = time.perf_counter()
        with service.lock:
            fetch = max(k, service.visa.config.k) if visa else k
            hits = searcher.text_to_image(q, fetch)
            results = service.rerank(q, hits)[:k] if visa else [service.hit_json(h) for h in hits]
        return {
            "query": q,
            "k": k,
            "visa": visa,
            "results": results,
            "seconds": round(time.perf_counter() - started, 4),
        }

    @app.post("/api/search/image")
    def search_image(file: Annotated[UploadFile, File()], k: int = Query(10, ge=1, le=max_k)) -> dict:
        image = _read_upload(file, max_upload_bytes)
        started = time.perf_counter()
        with service.lock:
            hits = searcher.image_to_image(image, k)
        return {
            "query": file.filename,
            "k": k,
            "visa": False,
            "results": [service.hit_json(h) for h in hits],
            "seconds": round(time.perf_counter() - started, 4),
        }

    @app.get("/thumbnail/{item}")
    def thumbnail(item: int, size: int = Query(128)) -> Response:
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(422, f"size must be one of {THUMBNAIL_SIZES}")
        if not 0 <= item < len(searcher.items):
            raise HTTPException(404, f"no item {item}; the index has {len(searcher.items)}")
        path = searcher.media_path(searcher.items[item]["path"])
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail(
                    (size, size),
                    Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.BICUBIC,
                )
                if max(img.size) < size:  # tiny images are enlarged, pixel-exact
                    scale = size / max(img.size)
                    img = img.resize(
                        (round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST
                    )
                buf = io.BytesIO()
                img.save(buf, format="PNG")
        except OSError:
            raise HTTPException(404, "the item's file is missing or unreadable") from None
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vlret.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    return app
