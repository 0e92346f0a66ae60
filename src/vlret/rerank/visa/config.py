"""VISA settings (YAML, validated like training recipes) and the factory that builds the four roles.

```yaml
k: 20                 # candidates re-ranked per query
questions: 3          # questions per query
w_base: 1.0           # fusion weights
w_text: 1.0
compat: false         # reproduce the official quirks (see docs)
concurrency: 16       # backend calls in flight
media: image          # or video
video_frames: {fps: 3, max_frames: 32, max_pixels: 151200}  # how VLMs see a video item
describer:          {backend: synthetic}
question_generator: {backend: rule}
vqa:                {backend: synthetic}
reranker:           {backend: lexical}
```

Backends: ``openai`` (``model``, ``base_url``: one server or a list of servers of the model, ``api_key_env``, ``timeout``, ``max_retries``; vLLM, SGLang,
Ollama, hosted APIs), ``hf`` (``model``: a transformers image-text-to-text or causal LM id or folder),
``synthetic`` / ``rule`` (offline, for the synthetic benchmark), and for the reranker ``cross-encoder``
(``model``), ``bi-encoder`` (``model``, default all-MiniLM-L6-v2) or ``lexical``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from vlret.data.video import VLMFrames
from vlret.errors import ConfigError
from vlret.rerank.backends.base import ChatDescriber, ChatQuestionGenerator, ChatVisualQA
from vlret.schema import build_dataclass, read_yaml


@dataclass
class VisaConfig:
    k: int = 20
    questions: int = 3
    w_base: float = 1.0
    w_text: float = 1.0
    compat: bool = False
    concurrency: int = 16  # calls in flight; vLLM/SGLang batch them, lower it for Ollama
    media: str = "image"
    # how VLMs see a video item: frames per second, at most this many, each scaled to at most max_pixels
    video_frames: VLMFrames = field(default_factory=VLMFrames)
    describer: dict = field(default_factory=lambda: {"backend": "synthetic"})
    question_generator: dict = field(default_factory=lambda: {"backend": "rule"})
    vqa: dict = field(default_factory=lambda: {"backend": "synthetic"})
    reranker: dict = field(default_factory=lambda: {"backend": "lexical"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ROLE_BACKENDS = {
    "describer": ("synthetic", "openai", "hf"),
    "question_generator": ("rule", "openai", "hf"),
    "vqa": ("synthetic", "openai", "hf"),
    "reranker": ("lexical", "cross-encoder", "bi-encoder"),
}
_CHAT_KEYS = {
    "backend",
    "model",
    "base_url",
    "api_key_env",
    "timeout",
    "max_retries",
    "max_tokens",
    "temperature",
    "revision",
    "device",
}
_RERANKER_KEYS = {"backend", "model", "device"}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_role(role: str, spec) -> None:
    """One role's mapping: a known backend, known keys, and values of the right type and range."""
    backends = ROLE_BACKENDS[role]
    if not isinstance(spec, dict) or spec.get("backend") not in backends:
        got = spec.get("backend") if isinstance(spec, dict) else spec
        raise ConfigError(f"{role}.backend: expected one of {', '.join(backends)}, got {got!r}")
    backend = spec["backend"]
    allowed = (
        {"backend"}
        if backend in ("synthetic", "rule", "lexical")
        else _RERANKER_KEYS
        if role == "reranker"
        else _CHAT_KEYS
    )
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"{role}: unknown key {unknown[0]!r} for backend {backend!r}; valid keys: {', '.join(sorted(allowed))}"
        )
    needs_model = backend in ("openai", "hf", "cross-encoder")
    if needs_model and not isinstance(spec.get("model"), str):
        raise ConfigError(f"{role}.model: backend {backend!r} needs a model name (a string)")
    checks = {
        "model": (lambda v: isinstance(v, str) and v, "a model name"),
        "base_url": (
            lambda v: all(
                isinstance(u, str) and u.startswith(("http://", "https://"))
                for u in ([v] if isinstance(v, str) else v if isinstance(v, list) and v else [None])
            ),
            "an http(s) URL, or a list of them (servers of one model, sharing the requests)",
        ),
        "api_key_env": (lambda v: isinstance(v, str) and v, "an environment variable name"),
        "device": (lambda v: isinstance(v, str) and v, "a device name such as cpu or cuda"),
        "timeout": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
        "max_retries": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "an integer >= 0",
        ),
        "max_tokens": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "an integer >= 1",
        ),
        "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "revision": (lambda v: isinstance(v, str) and v, "a label for the served model's version"),
    }
    for key, value in spec.items():
        if key in checks and not checks[key][0](value):
            raise ConfigError(f"{role}.{key}: expected {checks[key][1]}, got {value!r}")


def _check_config(config: VisaConfig) -> None:
    for key in ("k", "questions", "concurrency"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key}: expected an integer >= 1, got {getattr(config, key)!r}")
    for key in ("w_base", "w_text"):
        value = getattr(config, key)
        if not (_is_number(value) and value >= 0):
            raise ConfigError(f"{key}: expected a finite number >= 0, got {value!r}")
    if config.w_base == 0 and config.w_text == 0:
        raise ConfigError("w_base, w_text: at least one fusion weight must be above 0")
    if config.media not in ("image", "video"):
        raise ConfigError(f"media: expected image or video, got {config.media!r}")
    frames = config.video_frames
    if not (_is_number(frames.fps) and frames.fps > 0) or frames.max_frames < 1 or frames.max_pixels < 1:
        raise ConfigError(
            f"video_frames: expected fps > 0, max_frames >= 1 and max_pixels >= 1, got {dataclasses.asdict(frames)}"
        )
    for role in ROLE_BACKENDS:
        _check_role(role, getattr(config, role))


def load_visa_config(path: str | Path | None, overrides: dict | None = None) -> VisaConfig:
    """Read and validate a VISA YAML (every value is checked here, before any model is called)."""
    data = {}
    if path is not None:
        data = read_yaml(path, "VISA config")
    data.update(overrides or {})
    try:
        config = build_dataclass(VisaConfig, data, "")
        _check_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'visa config'}: {exc}") from None
    return config


def _chat_model(spec: dict, role: str):
    if spec["backend"] == "openai":
        from vlret.rerank.backends.openai_http import OpenAIChat

        return OpenAIChat(
            spec["model"],
            base_url=spec.get("base_url", "http://127.0.0.1:8000/v1"),
            api_key_env=spec.get("api_key_env", "OPENAI_API_KEY"),
            timeout=float(spec.get("timeout", 120)),
            max_retries=int(spec.get("max_retries", 4)),
            revision=spec.get("revision"),
        )
    from vlret.rerank.backends.hf_local import HFChat

    return HFChat(spec["model"], device=spec.get("device"))


def _generation(spec: dict) -> dict:
    """A chat role's ``max_tokens`` and ``temperature``, where its config sets them (else the role's own
    defaults): they reach every request and the role's cache key."""
    return {key: spec[key] for key in ("max_tokens", "temperature") if key in spec}


def _spec(spec: dict, role: str) -> tuple[str, dict]:
    _check_role(role, spec)
    return spec["backend"], {k: v for k, v in spec.items() if k != "backend"}


def build_describer(config: VisaConfig):
    backend, _ = _spec(config.describer, "describer")
    if backend == "synthetic":
        from vlret.rerank.backends.synthetic import SyntheticDescriber

        return SyntheticDescriber(frames=config.video_frames)
    if backend in ("openai", "hf"):
        return ChatDescriber(
            _chat_model(config.describer, "describer"),
            config.media,
            frames=config.video_frames,
            **_generation(config.describer),
        )
    raise ConfigError(f"describer: unknown backend {backend!r}; expected synthetic, openai or hf")


def build_question_generator(config: VisaConfig):
    backend, options = _spec(config.question_generator, "question_generator")
    if backend == "rule":
        from vlret.rerank.backends.synthetic import RuleQuestionGenerator

        return RuleQuestionGenerator(config.media)
    if backend in ("openai", "hf"):
        return ChatQuestionGenerator(
            _chat_model(config.question_generator, "question_generator"),
            config.media,
            **_generation(config.question_generator),
        )
    raise ConfigError(f"question_generator: unknown backend {backend!r}; expected rule, openai or hf")


def build_vqa(config: VisaConfig):
    backend, _ = _spec(config.vqa, "vqa")
    if backend == "synthetic":
        from vlret.rerank.backends.synthetic import SyntheticVisualQA

        return SyntheticVisualQA(frames=config.video_frames)
    if backend in ("openai", "hf"):
        return ChatVisualQA(
            _chat_model(config.vqa, "vqa"),
            config.media,
            frames=config.video_frames,
            **_generation(config.vqa),
        )
    raise ConfigError(f"vqa: unknown backend {backend!r}; expected synthetic, openai or hf")


def build_reranker(config: VisaConfig):
    backend, options = _spec(config.reranker, "reranker")
    if backend == "lexical":
        from vlret.rerank.backends.lexical import LexicalReranker

        return LexicalReranker()
    from vlret.rerank.backends.relevance import BiEncoderReranker, CrossEncoderReranker

    if backend == "cross-encoder":
        if "model" not in options:
            raise ConfigError(
                "reranker: backend 'cross-encoder' needs a 'model' (e.g. BAAI/bge-reranker-v2-m3)"
            )
        return CrossEncoderReranker(options["model"], device=options.get("device"))
    if backend == "bi-encoder":
        return BiEncoderReranker(options.get("model"), device=options.get("device"))
    raise ConfigError(f"reranker: unknown backend {backend!r}; expected lexical, cross-encoder or bi-encoder")
