"""The roles VISA needs, as small interfaces, and adapters that fill them from a chat model.

- :class:`Describer`: a general description of a gallery item.
- :class:`QuestionGenerator`: the raw reply (key phrases + questions) for a query; VISA parses it.
- :class:`VisualQA`: an answer to one question about one item, or "Uncertain".
- :class:`TextReranker`: relevance scores of (query, passage) pairs; higher = more relevant.

Each role has an ``id`` that names the model and its settings; it is part of every cache key.
A chat model (:class:`ChatModel`) takes a user prompt and optional images and returns text; the adapters
below turn one into a describer, a question generator or a VQA model with VISA's prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vlret.rerank.visa.prompts import ANSWER_PROMPT, DESCRIBE_PROMPT, QUESTION_PROMPT


@dataclass
class Usage:
    """Calls and tokens, counted per backend."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class ChatModel(Protocol):
    id: str
    usage: Usage

    def chat(
        self, prompt: str, images: list[Path] = (), max_tokens: int = 512, temperature: float = 0.0
    ) -> str: ...


class Describer(Protocol):
    id: str

    def describe(self, media: Path) -> str: ...


class QuestionGenerator(Protocol):
    id: str

    def generate(self, query: str, n: int) -> str: ...


class VisualQA(Protocol):
    id: str

    def answer(self, media: Path, question: str, key_phrases: str) -> str: ...


class TextReranker(Protocol):
    id: str

    def score(self, pairs: list[tuple[str, str]]) -> list[float]: ...


@dataclass
class ChatDescriber:
    chat_model: ChatModel
    media: str = "image"
    max_tokens: int = 512
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"describe:{self.chat_model.id}:max{self.max_tokens}"

    def describe(self, media: Path) -> str:
        prompt = DESCRIBE_PROMPT.format(media=self.media)
        return self.chat_model.chat(prompt, [media], max_tokens=self.max_tokens, temperature=0.0).strip()


@dataclass
class ChatQuestionGenerator:
    chat_model: ChatModel
    media: str = "image"
    temperature: float = 0.2  # the official setting
    max_tokens: int = 1024
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"questions:{self.chat_model.id}:t{self.temperature}:max{self.max_tokens}"

    def generate(self, query: str, n: int) -> str:
        prompt = QUESTION_PROMPT.format(media=self.media, n=n, query=query)
        return self.chat_model.chat(prompt, max_tokens=self.max_tokens, temperature=self.temperature)


@dataclass
class ChatVisualQA:
    chat_model: ChatModel
    media: str = "image"
    max_tokens: int = 256
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"vqa:{self.chat_model.id}:max{self.max_tokens}"

    def answer(self, media: Path, question: str, key_phrases: str) -> str:
        prompt = ANSWER_PROMPT.format(media=self.media, question=question, key_phrases=key_phrases)
        return self.chat_model.chat(prompt, [media], max_tokens=self.max_tokens, temperature=0.0).strip()
