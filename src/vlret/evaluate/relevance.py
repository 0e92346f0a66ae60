"""Graded relevance between captions and items by ROUGE-L (RVLR, after TERAN's relevance tool).

``R[t, j]`` is the ROUGE-L of caption ``t`` (the candidate) against the captions of item ``j`` (the
references), pycocoevalcap style: texts are lowercased and split on single spaces; for each reference the
longest common subsequence ``l`` gives ``P = l / |candidate|`` and ``Rc = l / |reference|``; the best ``P``
and the best ``Rc`` over the references are taken separately, and ``F = (1 + b^2) P R / (R + b^2 P)`` with
``b = 1.2`` (0 when either is 0). A caption scores 1 against its own item, and with ``b != 1`` the score
is not symmetric.

The matrix is computed one candidate at a time against every caption of the split at once with the
bit-parallel LCS recurrence (Allison and Dix; Hyyro 2004): each reference is a 64-bit word whose bits are
its word positions, so one candidate word updates every reference with four integer operations. References
longer than 64 words fall back to the dynamic programme. COCO's 25,000 x 5,000 matrix is built in row chunks
into a :class:`~vlret.evaluate.score_cache.ScoreMatrix`, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vlret.evaluate.score_cache import ScoreMatrix

BETA = 1.2
WORD_BITS = 64


def rouge_tokens(text: str) -> list[str]:
    """pycocoevalcap's tokens: lowercase, split on single spaces."""
    return text.lower().split(" ")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The longest common subsequence of two token lists, by the textbook dynamic programme."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for n, y in enumerate(b):
            current.append(previous[n] + 1 if x == y else max(previous[n + 1], current[n]))
        previous = current
    return previous[-1]


def f_score(precision: np.ndarray | float, recall: np.ndarray | float, beta: float = BETA):
    """ROUGE-L's F from the best precision and the best recall (0 where either is 0)."""
    p, r = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1 + beta**2) * p * r / (r + beta**2 * p)
    return np.where((p > 0) & (r > 0), f, 0.0)


def rouge_l(candidate: str, references: Sequence[str], beta: float = BETA) -> float:
    """ROUGE-L of one candidate against its references (see the module docstring)."""
    cand = rouge_tokens(candidate)
    best_p = best_r = 0.0
    for ref in references:
        tokens = rouge_tokens(ref)
        common = lcs_length(cand, tokens)
        best_p, best_r = max(best_p, common / len(cand)), max(best_r, common / len(tokens))
    return float(f_score(best_p, best_r, beta))


class _References:
    """Every caption of a split as a reference: per word, which captions hold it and at which bits."""

    def __init__(self, captions: list[list[str]]):
        self.count = len(captions)
        self.lengths = np.array([len(c) for c in captions], np.float64)
        self.long = np.flatnonzero(self.lengths > WORD_BITS)  # handled by the dynamic programme
        self.texts = captions
        holders: dict[str, dict[int, int]] = {}
        for row, tokens in enumerate(captions):
            if len(tokens) > WORD_BITS:
                continue
            for position, word in enumerate(tokens):
                bits = holders.setdefault(word, {})
                bits[row] = bits.get(row, 0) | (1 << position)
        self.rows = {w: np.fromiter(b.keys(), np.int64, len(b)) for w, b in holders.items()}
        self.bits = {w: np.fromiter(b.values(), np.uint64, len(b)) for w, b in holders.items()}

    def lcs_with(self, candidate: list[str]) -> np.ndarray:
        """``[references]`` LCS lengths of ``candidate`` against every reference."""
        ones = np.uint64(2**64 - 1)
        state = np.full(self.count, ones, np.uint64)
        match = np.zeros(self.count, np.uint64)
        for word in candidate:
            rows = self.rows.get(word)
            if rows is None:
                continue  # no reference holds the word: no state changes
            match[:] = 0
            match[rows] = self.bits[word]
            common = state & match
            state = (state + common) | (state - common)
        lcs = WORD_BITS - np.bitwise_count(state).astype(np.float64)
        for row in self.long:
            lcs[row] = lcs_length(candidate, self.texts[row])
        return lcs


def _rows(refs: _References, candidates: Sequence[str], starts: np.ndarray, beta: float) -> np.ndarray:
    out = np.zeros((len(candidates), len(starts)), np.float32)
    for n, text in enumerate(candidates):
        tokens = rouge_tokens(text)
        lcs = refs.lcs_with(tokens)
        precision = np.maximum.reduceat(lcs / len(tokens), starts)
        recall = np.maximum.reduceat(lcs / refs.lengths, starts)
        out[n] = f_score(precision, recall, beta)
    return out


def relevance_rows(
    candidates: Sequence[str], references: list[str], item_starts: np.ndarray, beta: float = BETA
) -> np.ndarray:
    """``[candidates, items]`` ROUGE-L, where item ``j``'s references are ``references[item_starts[j] :
    item_starts[j + 1]]`` (captions grouped by item, every item with at least one)."""
    refs = _References([rouge_tokens(r) for r in references])
    return _rows(refs, candidates, np.asarray(item_starts, np.int64), beta)


def relevance_key(captions: list[str], item_starts: np.ndarray, beta: float) -> str:
    """A content key for a split's relevance matrix: the captions, their grouping and beta."""
    digest = hashlib.sha256(json.dumps([captions, np.asarray(item_starts).tolist(), beta]).encode())
    return digest.hexdigest()[:24]


def relevance_matrix(
    captions: list[str],
    item_starts: np.ndarray,
    folder: str | Path,
    beta: float = BETA,
    chunk: int = 256,
) -> np.ndarray:
    """The ``[captions, items]`` ROUGE-L matrix of a split (captions grouped by item), built into
    ``folder / <content key>`` in row chunks (resumed after a kill) and returned memory-mapped."""
    key = relevance_key(captions, item_starts, beta)
    shape = (len(captions), len(item_starts))
    store = ScoreMatrix(Path(folder) / key, shape, {"kind": "rouge-l relevance", "beta": beta})
    starts = np.asarray(item_starts, np.int64)
    built: list[_References] = []  # the reference tables, built only when some rows are missing

    def compute(start: int, stop: int) -> torch.Tensor:
        if not built:
            built.append(_References([rouge_tokens(c) for c in captions]))
        return torch.from_numpy(_rows(built[0], captions[start:stop], starts, beta))

    store.fill((0, shape[0]), (0, shape[1]), compute, chunk)
    return store.array
