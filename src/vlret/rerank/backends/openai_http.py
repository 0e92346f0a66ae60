"""A chat client for OpenAI-compatible servers: vLLM, SGLang, Ollama (``/v1``), LM Studio, hosted APIs.

Images (and a clip's sampled frames, in order) travel as base64 data URLs before the text, in one user
message. Transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with exponential
backoff; other HTTP errors raise at once with the server's message.

Several servers of one model (``base_url`` a list) share the requests: each goes to the server with the
fewest requests in flight (ties taken in turn), and a retry goes to another server than the one that failed,
so the servers' own batching sees an even load and a server that is down costs a retry, not the run. Calls and token counts are added up in ``usage`` (thread-safe: the VISA pipeline
calls it from several threads, which is how its concurrency limit works).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import mimetypes
import os
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from vlret.errors import VlretError
from vlret.rerank.backends.base import Usage

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
#: a reply is kept to ``max_tokens`` x this many characters (tokens average about 4), at least
#: MIN_REPLY_CHARS: a server that ignores max_tokens (10 MB replies were seen) cannot fill the cache
CHARS_PER_TOKEN = 16
MIN_REPLY_CHARS = 4096

log = logging.getLogger(__name__)


class BackendError(VlretError):
    """A generation backend failed for good (after retries, or with a non-retryable error)."""


def image_data_url(image: Path | Image.Image) -> str:
    """A file's bytes, or an in-memory picture (a video frame) as JPEG, in a base64 data URL."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    mime = mimetypes.guess_type(str(image))[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(image).read_bytes()).decode()


class OpenAIChat:
    def __init__(
        self,
        model: str,
        base_url: str | list[str] = "http://127.0.0.1:8000/v1",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        revision: str | None = None,
    ):
        self.model = model
        self.base_urls = [u.rstrip("/") for u in ([base_url] if isinstance(base_url, str) else base_url)]
        if not self.base_urls:
            raise ValueError("base_url: give at least one server")
        self.base_url = self.base_urls[0]
        self._in_flight = [0] * len(self.base_urls)
        self._next = 0  # where the search for the least busy server starts: ties are taken in turn
        self.revision = revision
        self._id: str | None = None
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.max_retries = max_retries
        self.backoff = backoff
        self.usage = Usage()
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        """The model's name, the server, and what identifies the model behind the name: the server's own
        description of it (``GET /models``, less its volatile ``created`` time) and the config's
        ``revision``. Every cache key holds it, so a server that loads another model file under the same
        name misses the old replies, where it says so; one that reports nothing is told apart only by
        ``revision``. Read once, on first use.

        Several servers are named as a pool, not by address, so that adding a server keeps the cache;
        the servers that answer must describe the model alike."""
        if self._id is None:
            revision = f"#{self.revision}" if self.revision else ""
            if len(self.base_urls) == 1:
                self._id = (
                    f"openai:{self.model}@{self.base_url}{revision}{self._model_fingerprint(self.base_url)}"
                )
            else:
                self._id = f"openai:{self.model}@pool{revision}{self._pool_fingerprint()}"
        return self._id

    def _pool_fingerprint(self) -> str:
        answers: dict[str, str] = {}
        problems = []
        for base in self.base_urls:
            try:
                answers[base] = self._model_fingerprint(base)
            except BackendError as exc:
                problems.append(str(exc))
        if not answers:
            raise BackendError(f"none of the {len(self.base_urls)} servers answered: {problems[0]}")
        if len(set(answers.values())) > 1:
            described = ", ".join(f"{base} {fp or '(no description)'}" for base, fp in answers.items())
            raise BackendError(f"the servers of {self.model!r} describe different models: {described}")
        return next(iter(answers.values()))

    def _acquire(self, avoid: set[int]) -> int:
        """The server for the next request: the least busy one not in ``avoid`` (all, if every one is)."""
        with self._lock:
            order = [(self._next + n) % len(self.base_urls) for n in range(len(self.base_urls))]
            allowed = [i for i in order if i not in avoid] or order
            chosen = min(allowed, key=lambda i: self._in_flight[i])
            self._in_flight[chosen] += 1
            self._next = (chosen + 1) % len(self.base_urls)
            return chosen

    def _release(self, server: int) -> None:
        with self._lock:
            self._in_flight[server] -= 1

    def _model_fingerprint(self, base_url: str) -> str:
        url = f"{base_url}/models"
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.get(url)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code != 200:
                    if response.status_code not in RETRY_STATUS:
                        return ""  # the server lists no models: the name is all there is
                    problem = f"HTTP {response.status_code}"
                else:
                    return _listed_model(response, self.model)
            if attempt < self.max_retries:
                time.sleep(min(self.backoff * 2**attempt, 8.0))
        raise BackendError(f"{url}: gave up after {self.max_retries + 1} attempts ({problem})")

    def _payload(
        self, prompt: str, images: list[Path | Image.Image], max_tokens: int, temperature: float
    ) -> dict:
        content = [{"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in images]
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content if images else prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }

    def chat(
        self,
        prompt: str,
        images: list[Path | Image.Image] = (),
        max_tokens: int = 512,
        temperature: float = 0.0,
    ) -> str:
        payload = self._payload(prompt, list(images), max_tokens, temperature)
        failed: set[int] = set()  # servers that failed this request: the retry goes elsewhere
        for attempt in range(self.max_retries + 1):
            server = self._acquire(failed)
            url = f"{self.base_urls[server]}/chat/completions"
            try:
                response = self.client.post(url, json=payload)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    text, problem = self._read(response)
                    if text is not None:
                        return self._capped(text, max_tokens, url)
                else:
                    problem = f"HTTP {response.status_code}: {response.text[:300]}"
                    if response.status_code not in RETRY_STATUS:
                        raise BackendError(f"{url}: {problem}")
            finally:
                self._release(server)
            failed.add(server)
            if attempt < self.max_retries and len(failed) >= len(self.base_urls):
                time.sleep(min(self.backoff * 2**attempt, 8.0))  # every server failed: wait, then again
                failed.clear()
        raise BackendError(f"{url}: gave up after {self.max_retries + 1} attempts ({problem})")

    def _read(self, response: httpx.Response) -> tuple[str | None, str]:
        """``(text, "")`` from a well-formed reply; ``(None, problem)`` for one worth retrying: a body that
        is not JSON, or no text (``content: null`` or empty), which must never be stored as an answer."""
        try:
            body = response.json()
        except ValueError:
            return None, f"a 200 reply whose body is not JSON: {response.text[:200]!r}"
        try:
            text = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None, f"a 200 reply of unexpected shape: {str(body)[:200]}"
        if not isinstance(text, str):
            return None, f"a 200 reply without text (content is {text!r})"
        if not text.strip():  # a wrong chat template gives these: retried, and never stored as an answer
            return None, "a 200 reply with empty text"
        self._count(body.get("usage"))
        return text, ""

    def _capped(self, text: str, max_tokens: int, url: str) -> str:
        """``text`` cut to what ``max_tokens`` tokens can spell (:data:`CHARS_PER_TOKEN` characters each,
        far more than any tokenizer's average): a server that ignores the limit cannot fill the cache."""
        cap = max(MIN_REPLY_CHARS, max_tokens * CHARS_PER_TOKEN)
        if len(text) <= cap:
            return text
        log.warning(
            "%s: a reply of %d characters for max_tokens %d; %d kept", url, len(text), max_tokens, cap
        )
        with self._lock:
            self.usage.truncated_replies += 1
        return text[:cap]

    def _count(self, usage) -> None:
        """Add a reply's token counts; counts that are missing or malformed are ignored."""

        def tokens(key: str) -> int:
            value = usage.get(key) if isinstance(usage, dict) else None
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        with self._lock:
            self.usage.calls += 1
            self.usage.prompt_tokens += tokens("prompt_tokens")
            self.usage.completion_tokens += tokens("completion_tokens")

    def close(self) -> None:
        self.client.close()


def _listed_model(response: httpx.Response, model: str) -> str:
    """A short hash of the ``/models`` entry for ``model`` (or of the only entry listed); "" when none."""
    try:
        entries = response.json().get("data") or []
    except (ValueError, AttributeError):
        return ""
    entries = [e for e in entries if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("id") == model), entries[0] if len(entries) == 1 else None)
    if entry is None:
        return ""
    stable = {k: v for k, v in entry.items() if k != "created"}
    return ":" + hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]
