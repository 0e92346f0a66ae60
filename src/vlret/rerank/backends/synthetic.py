"""Offline backends for the synthetic benchmark that look at the pixels.

:class:`ShapeSceneParser` segments the non-background pixels of an image into connected components and names
each one (colour by the nearest named colour, shape from its silhouette, size from its extent, texture from
its share of dark pixels, position from its grid cell). The describer and the question answerer built on it
never read the generator's scene labels: they see exactly what a VLM would, the image file.
:class:`RuleQuestionGenerator` writes VISA-style key phrases and questions from a query with patterns, in
the reply format the real LLM is asked for, so the same parser handles both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vlret.data.synth import COLOURS, SHAPES, position_phrase

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
        return Detected(shape, colour, "large" if extent > 0.62 else "small", texture, grid_row, grid_col)


@lru_cache(maxsize=4096)
def _parse_file(path: str, stamp: tuple[int, int], min_pixels: int) -> tuple[Detected, ...]:
    # Keyed by the file's size and mtime too: an edited file is parsed again.
    with Image.open(path) as img:
        return tuple(ShapeSceneParser(min_pixels).parse(img.convert("RGB")))


def parse_media(media: Path, parser: ShapeSceneParser) -> tuple[Detected, ...]:
    """The shapes in an image file, parsed once per file (the K x Q questions about one item reuse it)."""
    st = Path(media).stat()
    return _parse_file(str(media), (st.st_size, st.st_mtime_ns), parser.min_pixels)


class SyntheticDescriber:
    """A description of the shapes the parser finds, in plain sentences."""

    id = "synthetic-describer/1"

    def __init__(self, parser: ShapeSceneParser | None = None):
        self.parser = parser or ShapeSceneParser()

    def describe(self, media: Path) -> str:
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


class RuleQuestionGenerator:
    """Key phrases and questions from patterns, in the LLM reply format VISA parses."""

    id = "rule-questions/1"

    def generate(self, query: str, n: int) -> str:
        phrases = object_phrases(query)
        keys = [_words(p) for p in phrases] or [query]
        questions = [f"Is there a {k} in the image?" for k in keys]
        count = re.search(r"\b(two|three|four|five)\b", query.lower())
        if count and phrases:
            questions.insert(0, f"How many {phrases[0]['colour']} {phrases[0]['shape']}s are there?")
        for p in phrases:
            questions.append(f"Where is the {_words(p)}?")
        questions.append("What shapes are in the image?")
        key_lines = "\n".join(f"{i}. {k}" for i, k in enumerate(keys, 1))
        question_lines = "\n".join(f"{i}. {q}" for i, q in enumerate(questions[:n], 1))
        return f"key phrases:\n{key_lines}\nquestions:\n{question_lines}"


def _matches(obj: Detected, attrs: dict[str, str]) -> bool:
    return all(getattr(obj, k) == v for k, v in attrs.items())


class SyntheticVisualQA:
    """Answers pattern questions about the parsed shapes; "Uncertain" when the item does not fit."""

    id = "synthetic-vqa/1"

    def __init__(self, parser: ShapeSceneParser | None = None):
        self.parser = parser or ShapeSceneParser()

    def answer(self, media: Path, question: str, key_phrases: str) -> str:
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
