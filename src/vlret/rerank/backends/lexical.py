"""A lexical relevance scorer: how much of the query the passage covers, by words and word pairs.

Score = mean of the recall of the query's content words and of its adjacent content-word pairs in the
passage. Pairs reward attributes bound to the right noun ("red circle", not "red square ... blue circle").
Needs no model; a pure function of its inputs.
"""

from __future__ import annotations

import re

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "is",
        "are",
        "and",
        "with",
        "there",
        "picture",
        "image",
        "including",
        "shapes",
    ]
)
_WORD = re.compile(r"[a-z0-9]+")


def _content(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _pairs(words: list[str]) -> set[tuple[str, str]]:
    return set(zip(words, words[1:], strict=False))


class LexicalReranker:
    id = "lexical-overlap/1"

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        out = []
        for query, passage in pairs:
            q, p = _content(query), _content(passage)
            if not q:
                out.append(0.0)
                continue
            words = len(set(q) & set(p)) / len(set(q))
            qp = _pairs(q)
            bigrams = len(qp & _pairs(p)) / len(qp) if qp else words
            out.append((words + bigrams) / 2)
        return out
