"""The roles VISA needs, as small interfaces, and adapters that fill them from a chat model.

- :class:`Describer`: a general description of a gallery item.
- :class:`QuestionGenerator`: the raw reply (key phrases + questions) for a query; VISA parses it.
- :class:`VisualQA`: an answer to one question about one item, or "Uncertain".
- :class:`TextReranker`: relevance scores of (query, passage) pairs; higher = more relevant.

Each role has an ``id`` that names the model and its settings; it is part of every cache key.
A chat model (:class:`ChatModel`) takes a user prompt and optional images and returns text; the adapters
below turn one into a describer, a question generator or a VQA model with VISA's prompts. A video item is
shown as its frames sampled at ``fps`` and scaled to ``max_pixels`` (:class:`~vlret.data.video.VLMFrames`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vlret.data.video import VLMFrames, is_video_path
from vlret.rerank.visa.prompts import ANSWER_PROMPT, DESCRIBE_PROMPT, QUESTION_PROMPT


@dataclass
class Usage:
    """Calls and tokens, counted per backend."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_replies: int = 0  # replies longer than max_tokens allows, cut before they were stored

    def as_dict(self) -> dict:
        counts = {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.truncated_replies:
            counts["truncated_replies"] = self.truncated_replies
        return counts


class ChatModel(Protocol):
    id: str
    usage: Usage

    def chat(self, prompt: str, images: list = (), max_tokens: int = 512, temperature: float = 0.0) -> str:
        """The reply to ``prompt`` about ``images`` (files, or in-memory frames of a clip)."""


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


def visual_input(media: Path, frames: VLMFrames) -> list:
    """What a chat model is shown of an item: the image file, or a video's sampled and scaled frames."""
    return frames.frames(media) if is_video_path(media) else [media]


def _frames_id(frames: VLMFrames) -> str:
    return f":fps{frames.fps}x{frames.max_frames}px{frames.max_pixels}"


@dataclass
class ChatDescriber:
    chat_model: ChatModel
    media: str = "image"
    max_tokens: int = 512
    frames: VLMFrames = field(default_factory=VLMFrames)
    temperature: float = 0.0

    @property
    def id(self) -> str:  # every setting that changes the reply (read when first needed: see OpenAIChat.id)
        video = _frames_id(self.frames) if self.media == "video" else ""
        return f"describe:{self.chat_model.id}:t{self.temperature}:max{self.max_tokens}{video}"

    def describe(self, media: Path) -> str:
        prompt = DESCRIBE_PROMPT.format(media=self.media)
        shown = visual_input(media, self.frames)
        return self.chat_model.chat(prompt, shown, self.max_tokens, self.temperature).strip()


@dataclass
class ChatQuestionGenerator:
    chat_model: ChatModel
    media: str = "image"
    temperature: float = 0.2  # the official setting
    max_tokens: int = 1024

    @property
    def id(self) -> str:
        return f"questions:{self.chat_model.id}:t{self.temperature}:max{self.max_tokens}"

    def generate(self, query: str, n: int) -> str:
        prompt = QUESTION_PROMPT.format(media=self.media, n=n, query=query)
        return self.chat_model.chat(prompt, max_tokens=self.max_tokens, temperature=self.temperature)


@dataclass
class ChatVisualQA:
    chat_model: ChatModel
    media: str = "image"
    max_tokens: int = 256
    frames: VLMFrames = field(default_factory=VLMFrames)
    temperature: float = 0.0

    @property
    def id(self) -> str:
        video = _frames_id(self.frames) if self.media == "video" else ""
        return f"vqa:{self.chat_model.id}:t{self.temperature}:max{self.max_tokens}{video}"

    def answer(self, media: Path, question: str, key_phrases: str) -> str:
        prompt = ANSWER_PROMPT.format(media=self.media, question=question, key_phrases=key_phrases)
        shown = visual_input(media, self.frames)
        return self.chat_model.chat(prompt, shown, self.max_tokens, self.temperature).strip()
