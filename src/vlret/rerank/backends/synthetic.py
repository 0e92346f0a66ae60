"""Offline backends for the synthetic benchmarks that look at the pixels.

:class:`ShapeSceneParser` segments the non-background pixels of an image into connected components and names
each one (colour by the nearest named colour, shape from its silhouette, size from its extent, texture from
its share of dark pixels, position from its grid cell). The describer and the question answerer built on it
never read the generator's scene labels: they see exactly what a VLM would, the image file.
:class:`RuleQuestionGenerator` writes VISA-style key phrases and questions from a query with patterns, in
the reply format the real LLM is asked for, so the same parser handles both.

Videos (the synthetic video benchmark) are read as a VLM would read them, as frames sampled at a few frames a
second (:class:`~vlret.data.video.VLMFrames`): each frame is parsed, the shapes are followed from frame to
frame by colour and shape (:func:`track_clip`), and each track becomes an event: it appears (absent in the
first frame), disappears (absent in the last), or moves left / right / up / down (its centre travels more
than a fifth of the side). Events are told in the order they happen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vlret.data._io import file_identity
from vlret.data.synth import COLOURS, SHAPES, position_phrase
from vlret.data.video import VLMFrames, is_video_path

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
_NAMES = list(COLOURS)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class Detected:
    shape: str
    colour: str
    size: str
    texture: str
    row: int
    col: int
    x: float = 0.5  # centre, as fractions of the width and height
    y: float = 0.5

    def phrase(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.size} {texture}{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        return position_phrase(self.row, self.col)


class ShapeSceneParser:
    """Finds and names the shapes in an image (see the module docstring)."""

    def __init__(self, min_pixels: int = 8):
        self.min_pixels = min_pixels

    def parse(self, image: Image.Image) -> list[Detected]:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
        h, w, _ = rgb.shape
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        background = np.median(border, axis=0)
        mask = np.linalg.norm(rgb - background, axis=2) > 55
        mask = ndimage.binary_opening(mask, iterations=1) | (mask & ndimage.binary_erosion(mask))
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        found = []
        for index, region in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[region] == index
            if component.sum() < self.min_pixels:
                continue
            found.append(self._name(rgb[region], component, region, (h, w)))
        return sorted(found, key=lambda d: (d.row, d.col))

    @staticmethod
    def _texture(pixels: np.ndarray, component: np.ndarray) -> str:
        """Plain: almost no dark pixels. Striped: the dark pixels form diagonal lines, so the dark mask
        overlaps itself when shifted along the diagonal; dots do not."""
        brightness = pixels.max(axis=2)
        inner = ndimage.binary_erosion(component)  # the outline is blurred against the background
        if inner.sum() < 4:
            return "plain"
        dark = (brightness < 0.5 * np.percentile(brightness[inner], 90)) & inner
        if dark.sum() < 0.06 * inner.sum():
            return "plain"
        shifted = np.zeros_like(dark)
        shifted[2:, 2:] = dark[:-2, :-2]
        overlap = (dark & shifted).sum() / dark.sum()
        return "striped" if overlap > 0.45 else "dotted"

    def _name(
        self, pixels: np.ndarray, component: np.ndarray, region: tuple, size: tuple[int, int]
    ) -> Detected:
        h, w = size
        values = pixels[component]
        brightness = values.max(axis=1)
        bright = values[brightness >= 0.6 * np.percentile(brightness, 90)]
        colour = _NAMES[int(np.argmin(np.linalg.norm(_PALETTE - np.median(bright, axis=0), axis=1)))]
        texture = self._texture(pixels, component)
        rows, cols = component.shape
        fill = component.sum() / (rows * cols)
        widths = component.sum(axis=1)
        widest = float(np.argmax(widths)) / max(rows - 1, 1)
        if fill > 0.9:
            shape = "square"
        elif fill > 0.65:
            shape = "circle"
        else:
            shape = "triangle" if widest > 0.7 else "diamond"
        extent = max(rows, cols) / (min(h, w) / 3.0)
        cy = (region[0].start + region[0].stop) / 2.0
        cx = (region[1].start + region[1].stop) / 2.0
        grid_row, grid_col = min(2, int(cy / (h / 3.0))), min(2, int(cx / (w / 3.0)))
        size_word = "large" if extent > 0.62 else "small"
        return Detected(shape, colour, size_word, texture, grid_row, grid_col, cx / w, cy / h)


@lru_cache(maxsize=4096)
def _parse_file(path: str, identity: tuple, min_pixels: int) -> tuple[Detected, ...]:
    # Keyed by the file's identity too: an edited file is parsed again.
    with Image.open(path) as img:
        return tuple(ShapeSceneParser(min_pixels).parse(img.convert("RGB")))


def parse_media(media: Path, parser: ShapeSceneParser) -> tuple[Detected, ...]:
    """The shapes in an image file, parsed once per file (the K x Q questions about one item reuse it)."""
    return _parse_file(str(media), file_identity(media), parser.min_pixels)


MOVE_THRESHOLD = 0.2  # of the side: less is standing still


@dataclass(frozen=True)
class ClipEvent:
    """What one shape does in a clip, and when (the frame index the event is placed at)."""

    colour: str
    shape: str
    kind: str  # moves, appears, disappears, stays
    direction: str | None
    when: float

    @property
    def subject(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def action(self) -> str:
        if self.kind == "moves":
            return f"moves {self.direction}"
        return "is there" if self.kind == "stays" else self.kind

    def phrase(self) -> str:
        return f"a {self.subject} {self.action}"


def _tracks(frames: list[tuple[Detected, ...]]) -> dict[tuple[str, str], list[tuple[int, Detected]]]:
    """Sightings per shape. A colour seen at most once per frame is one shape, named by the silhouette most
    frames give it (a small, moving shape is misread in some frames); otherwise colour and shape tell them
    apart."""
    by_colour: dict[str, list[tuple[int, Detected]]] = {}
    for n, objects in enumerate(frames):
        for obj in objects:
            by_colour.setdefault(obj.colour, []).append((n, obj))
    tracks: dict[tuple[str, str], list[tuple[int, Detected]]] = {}
    for colour, sightings in by_colour.items():
        frame_numbers = [n for n, _ in sightings]
        if len(set(frame_numbers)) == len(frame_numbers):
            shapes = [o.shape for _, o in sightings]
            tracks[(colour, max(SHAPES, key=shapes.count))] = sightings
        else:
            for n, obj in sightings:
                tracks.setdefault((colour, obj.shape), []).append((n, obj))
    return tracks


def track_clip(frames: list[tuple[Detected, ...]]) -> list[ClipEvent]:
    """The events of the shapes in a clip's parsed frames, in the order they happen (see the module docstring)."""
    events = []
    last_frame = len(frames) - 1
    for (colour, shape), sightings in _tracks(frames).items():
        first, start = sightings[0]
        last, end = sightings[-1]
        dx, dy = end.x - start.x, end.y - start.y
        if first > 0:
            events.append(ClipEvent(colour, shape, "appears", None, first - 0.5))
        elif last < last_frame:
            events.append(ClipEvent(colour, shape, "disappears", None, last + 0.5))
        elif max(abs(dx), abs(dy)) > MOVE_THRESHOLD:
            direction = (
                ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
            )
            # placed where the centre is half-way along its path
            along = [abs((o.x - start.x) * dx + (o.y - start.y) * dy) for _, o in sightings]
            half = 0.5 * (dx * dx + dy * dy)
            when = next(n for (n, _), a in zip(sightings, along, strict=True) if a >= half)
            events.append(ClipEvent(colour, shape, "moves", direction, float(when)))
        else:
            events.append(ClipEvent(colour, shape, "stays", None, float(last_frame + 1)))
    return sorted(events, key=lambda e: (e.when, e.colour, e.shape))


@lru_cache(maxsize=1024)
def _clip_events(path: str, identity: tuple, frames: VLMFrames, min_pixels: int) -> tuple[ClipEvent, ...]:
    parser = ShapeSceneParser(min_pixels)
    return tuple(track_clip([tuple(parser.parse(f)) for f in frames.frames(path)]))


def clip_events(media: Path, parser: ShapeSceneParser, frames: VLMFrames) -> tuple[ClipEvent, ...]:
    """The events in a video file, read once per file and sampling."""
    return _clip_events(str(media), file_identity(media), frames, parser.min_pixels)


def _story(events: tuple[ClipEvent, ...]) -> str:
    """The events in order, the way the benchmark's captions tell them."""
    told = [e.phrase() for e in events if e.kind != "stays"] or [e.phrase() for e in events]
    return ", then ".join(told)


class SyntheticDescriber:
    """A description of the shapes the parser finds, in plain sentences; for a clip, what happens in it."""

    def __init__(self, parser: ShapeSceneParser | None = None, frames: VLMFrames | None = None):
        self.parser = parser or ShapeSceneParser()
        self.frames = frames or VLMFrames()
        self.id = f"synthetic-describer/2:fps{self.frames.fps}x{self.frames.max_frames}"

    def describe(self, media: Path) -> str:
        if is_video_path(media):
            events = clip_events(media, self.parser, self.frames)
            return f"A grey clip: {_story(events)}." if events else "An empty grey clip."
        objects = parse_media(media, self.parser)
        if not objects:
            return "An empty grey picture."
        parts = [f"a {o.phrase()} {o.position}" for o in objects]
        count = NUMBER_WORDS[len(objects)] if len(objects) < len(NUMBER_WORDS) else str(len(objects))
        listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"A grey picture with {count} shapes: {listing}."


_ATTRS = {
    "size": ("small", "large"),
    "texture": ("striped", "dotted"),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
}
_PHRASE = re.compile(
    r"(?:(small|large) )?(?:(striped|dotted) )?(red|green|blue|yellow|purple|orange) (circle|square|triangle|diamond)s?"
)


def object_phrases(text: str) -> list[dict[str, str]]:
    """The ``[size] [texture] colour shape`` phrases in a text, as attribute dicts (absent ones left out)."""
    out = []
    for size, texture, colour, shape in _PHRASE.findall(text.lower()):
        attrs = {"colour": colour, "shape": shape}
        if size:
            attrs["size"] = size
        if texture:
            attrs["texture"] = texture
        out.append(attrs)
    return out


def _words(attrs: dict[str, str]) -> str:
    return " ".join(attrs[k] for k in ("size", "texture", "colour", "shape") if k in attrs)


_ACTION = re.compile(r"\b(moves?|appears?|disappears?)\b")


class RuleQuestionGenerator:
    """Key phrases and questions from patterns, in the LLM reply format VISA parses; a query that tells
    what happens (moves, appears, disappears) also asks what each shape does."""

    def __init__(self, media: str = "image"):
        self.media = media
        self.id = "rule-questions/1" if media == "image" else f"rule-questions/2:{media}"

    def generate(self, query: str, n: int) -> str:
        phrases = object_phrases(query)
        keys = [_words(p) for p in phrases] or [query]
        questions = [f"Is there a {k} in the {self.media}?" for k in keys]
        if _ACTION.search(query.lower()):
            questions = [f"What does the {_words(p)} do?" for p in phrases] + questions
        count = re.search(r"\b(two|three|four|five)\b", query.lower())
        if count and phrases:
            questions.insert(0, f"How many {phrases[0]['colour']} {phrases[0]['shape']}s are there?")
        for p in phrases:
            questions.append(f"Where is the {_words(p)}?")
        questions.append(f"What shapes are in the {self.media}?")
        key_lines = "\n".join(f"{i}. {k}" for i, k in enumerate(keys, 1))
        question_lines = "\n".join(f"{i}. {q}" for i, q in enumerate(questions[:n], 1))
        return f"key phrases:\n{key_lines}\nquestions:\n{question_lines}"


def _matches(obj: Detected, attrs: dict[str, str]) -> bool:
    return all(getattr(obj, k) == v for k, v in attrs.items())


class SyntheticVisualQA:
    """Answers pattern questions about the parsed shapes (of a clip: what they do); "Uncertain" when the item
    does not fit."""

    def __init__(self, parser: ShapeSceneParser | None = None, frames: VLMFrames | None = None):
        self.parser = parser or ShapeSceneParser()
        self.frames = frames or VLMFrames()
        self.id = f"synthetic-vqa/2:fps{self.frames.fps}x{self.frames.max_frames}"

    def _answer_clip(self, media: Path, question: str, key_phrases: str) -> str:
        events = clip_events(media, self.parser, self.frames)
        wanted = object_phrases(key_phrases)
        if wanted and not any(
            e.colour == w["colour"] and e.shape == w["shape"] for e in events for w in wanted
        ):
            return "Uncertain"
        q = question.lower()
        if q.startswith("what shapes"):
            return f"In the video, {_story(events)}."
        asked = object_phrases(question)
        hits = [e for e in events if asked and (e.colour, e.shape) == (asked[0]["colour"], asked[0]["shape"])]
        if not hits:
            return "Uncertain"
        if q.startswith("what does"):
            return f"The {hits[0].subject} {hits[0].action}."
        return f"Yes, {hits[0].phrase()}."

    def answer(self, media: Path, question: str, key_phrases: str) -> str:
        if is_video_path(media):
            return self._answer_clip(media, question, key_phrases)
        objects = parse_media(media, self.parser)
        wanted = object_phrases(key_phrases)
        # The key-phrase gate: an item that shows none of the query's objects is not worth answering about.
        if wanted and not any(_matches(o, w) for o in objects for w in wanted):
            return "Uncertain"
        asked = object_phrases(question)
        q = question.lower()
        if q.startswith("how many") and asked:
            n = sum(_matches(o, asked[0]) for o in objects)
            word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
            return f"There are {word} {_words(asked[0])}s." if n else "Uncertain"
        if q.startswith("what shapes"):
            return "The image shows " + ", ".join(f"a {o.phrase()}" for o in objects) + "."
        if not asked:
            return "Uncertain"
        hits = [o for o in objects if _matches(o, asked[0])]
        if not hits:
            return "Uncertain"
        if q.startswith("where"):
            return f"The {hits[0].phrase()} is {hits[0].position}."
        return f"Yes, there is a {hits[0].phrase()} {hits[0].position}."
