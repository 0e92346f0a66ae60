"""Whether a caption of the synthetic benchmark is true of a scene.

The benchmark pairs each caption with one image, but a short caption ("a red circle") is often true of other
test images as well. Reports use :func:`caption_fits` to tell such results apart from real misses. It reads
the generator's five templates (:func:`vlret.data.synth.captions_for`) by their meaning, not their wording
choices: a noun phrase fits an object when every word it names agrees (size and texture may be left out), a
relation holds when the grid cells say so, a list needs a different object for each part, and a count is
exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import permutations

from vlret.data.synth import COLOURS, NUMBER_WORDS, SHAPES, SIZES, TEXTURES, SceneObject, position_phrase

_NOUN = (
    rf"an? (?:(?P<{{p}}size>{'|'.join(SIZES)}) )?(?:(?P<{{p}}texture>{'|'.join(TEXTURES)}) )?"
    rf"(?P<{{p}}colour>{'|'.join(COLOURS)}) (?P<{{p}}shape>{'|'.join(SHAPES)})"
)
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_SINGLE = re.compile(rf"^{_NOUN.format(p='a')}(?: (?P<where>.+?))?(?: of the picture)?$")
_RELATION = re.compile(rf"^{_NOUN.format(p='a')} (?P<relation>{'|'.join(_RELATIONS)}) {_NOUN.format(p='b')}$")
_COUNT = re.compile(rf"^(?P<n>\w+) (?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)})s$")
_INCLUDING = re.compile(r"^(?P<n>\w+) shapes including (?P<rest>.+)$")


def caption_fits(caption: str, objects: Sequence[SceneObject]) -> bool:
    """True when ``caption`` (one of the benchmark's templates) is true of a scene with ``objects``.
    A caption outside the templates fits nothing."""
    text = caption.strip().lower()
    if match := _COUNT.match(text):
        wanted = (match["colour"], match["shape"])
        return _number(match["n"]) == sum((o.colour, o.shape) == wanted for o in objects)
    if match := _INCLUDING.match(text):
        return _number(match["n"]) == len(objects) and _single_fits(match["rest"], objects)
    if " and " in text:
        return _list_fits(text.replace(" and ", ", ").split(", "), objects)
    if match := _RELATION.match(text):
        return any(
            _noun_fits(match, "a", a)
            and _noun_fits(match, "b", b)
            and _relation_holds(match["relation"], a, b)
            for a in objects
            for b in objects
            if a is not b
        )
    return _single_fits(text, objects)


def _number(word: str) -> int:
    return NUMBER_WORDS.index(word) if word in NUMBER_WORDS else -1


def _noun_fits(match: re.Match, prefix: str, obj: SceneObject) -> bool:
    """Every attribute the noun phrase names agrees with ``obj``; "plain" is never said."""
    return all(
        match[prefix + attribute] in (None, getattr(obj, attribute))
        for attribute in ("size", "texture", "colour", "shape")
    )


def _single_fits(text: str, objects: Sequence[SceneObject]) -> bool:
    match = _SINGLE.match(text)
    if match is None:
        return False
    return any(
        _noun_fits(match, "a", o) and match["where"] in (None, position_phrase(o.row, o.col)) for o in objects
    )


def _list_fits(parts: list[str], objects: Sequence[SceneObject]) -> bool:
    """Each part names a different object (the generator lists them in no visible order)."""
    if len(parts) > len(objects):
        return False
    return any(
        all(_single_fits(part, [o]) for part, o in zip(parts, chosen, strict=False))
        for chosen in permutations(objects, len(parts))
    )


def _relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    return {
        "to the left of": a.col < b.col,
        "to the right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]
