"""VISA's prompts (versioned: the version is part of every cache key) and the parsing of the LLM's reply.

The prompts are our own wording of the intent described in the VISA paper and code: a one-shot question
generator that lists key phrases and three questions, and a question answerer that says "Uncertain" when it
cannot tell or when the item does not match the query's key phrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_VERSION = "visa-prompts/1"

DESCRIBE_PROMPT = (
    "Describe this {media} in detail: the objects, their attributes (colour, shape, size, texture), how many "
    "there are, what they do, where they are relative to each other, the scene and background, and any "
    "visible text. Write plain sentences."
)

QUESTION_PROMPT = """You see a {media}; one sentence describes it.
1. Extract key phrases that name the main elements of the scene: object types, attributes, actions, locations,
   interactions.
2. From these phrases write {n} natural questions that a visual assistant could ask about the {media}. Each
   question must target a visual detail in the sentence and be answerable with confidence, either because the
   content is visible or because its absence can be checked. Ask "how many" only if the sentence states a
   quantity. Do not restate or closely paraphrase the whole sentence.
Answer with a numbered list under the header "key phrases:" and a numbered list of {n} questions under the
header "questions:".

Example sentence: a red and white tennis sweater hanging over the back of a grey sofa
key phrases:
1. tennis sweater
2. red and white sweater
3. hanging over
4. back of a sofa
5. grey sofa
questions:
1. What colours is the sweater?
2. Where is the sweater hanging?
3. What colour is the sofa?

Sentence: {query}"""

ANSWER_PROMPT = (
    "Answer this question about the {media} in English: {question}\n"
    "Reply with a full sentence, not just yes, no or a single word. If the answer cannot be determined, or the "
    "objects asked about are not present, reply with the single word 'Uncertain'. If the {media} is unrelated "
    "or only loosely related to these phrases: {key_phrases}, reply with the single word 'Uncertain'."
)

FALLBACK_QUESTIONS = (
    "What is the main object or subject in the {media}?",
    "What actions or movements can be seen in the {media}?",
    "What notable interactions between objects are there in the {media}?",
)

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_NUMBERED = re.compile(r"\d+\.\s+")


@dataclass
class ParsedQuestions:
    key_phrases: str
    questions: list[str]
    status: str  # ok | partial (padded with fallbacks) | fallback (reply unusable)
    raw: str = ""  # the reply as received

    def as_dict(self) -> dict:
        return {"key_phrases": self.key_phrases, "questions": self.questions, "status": self.status}


def fallback_questions(media: str, n: int) -> list[str]:
    base = [q.format(media=media) for q in FALLBACK_QUESTIONS]
    return [base[i % len(base)] for i in range(n)]


#: a question's bounds: shorter is a fragment ("Where?"), longer is not one question
QUESTION_WORDS = (3, 40)
#: the example questions of QUESTION_PROMPT: a reply that repeats them echoes the prompt
_EXAMPLE_QUESTIONS = {
    " ".join(q.lower().split())
    for q in re.findall(r"\d+\.\s+([^?\n]+\?)", QUESTION_PROMPT.split("Example")[1])
}


def _real_question(chunk: str) -> str | None:
    """The question a numbered chunk holds, or None: it must end in the reply's own ``?`` (none is added),
    start with a letter, be of bounded length, and not be one of the prompt's example questions."""
    if "?" not in chunk:
        return None
    question = chunk.split("?", 1)[0].strip() + "?"
    words = question.split()
    if not question[0].isalpha() or not QUESTION_WORDS[0] <= len(words) <= QUESTION_WORDS[1]:
        return None
    if " ".join(question.lower().split()) in _EXAMPLE_QUESTIONS:
        return None
    return question


def parse_questions(reply: str, query: str, n: int = 3, media: str = "image") -> ParsedQuestions:
    """Key phrases and ``n`` questions from an LLM reply.

    Newlines become spaces. Each ``questions:`` marker is tried from the last one back (a reply that echoes
    the instructions names the header earlier, inside a sentence); the questions are the numbered chunks
    after it that hold real questions (:func:`_real_question`), each cut at its first ``?``; the key phrases
    are the text between the last ``key phrases:`` before that marker and the marker. A reply with CJK
    characters or without a real question falls back to the query as key phrases and generic questions
    (``status="fallback"``); fewer than ``n`` questions are padded with generic ones (``status="partial"``).
    Parsing never raises.
    """
    text = " ".join(reply.split())
    lower = text.lower()
    if _CJK.search(text):
        return ParsedQuestions(query, fallback_questions(media, n), "fallback", reply)
    markers = [m.start() for m in re.finditer("questions:", lower)]
    for marker in reversed(markers):
        chunks = _NUMBERED.split(text[marker + len("questions:") :])
        questions = [q for q in (_real_question(c.strip()) for c in chunks) if q is not None]
        if not questions:
            continue
        start = lower.rfind("key phrases:", 0, marker)
        key_phrases = text[start + len("key phrases:") : marker].strip() if start >= 0 else query
        if len(questions) >= n:
            return ParsedQuestions(key_phrases or query, questions[:n], "ok", reply)
        padded = questions + fallback_questions(media, n)[len(questions) :]
        return ParsedQuestions(key_phrases or query, padded, "partial", reply)
    return ParsedQuestions(query, fallback_questions(media, n), "fallback", reply)


_UNCERTAIN = re.compile(r"^\W*uncertain\W*$", re.IGNORECASE)


def is_uncertain(answer: str) -> bool:
    return bool(_UNCERTAIN.match(answer))


def assemble_passage(answers: list[str], description: str, usable: bool, compat: bool = False) -> str:
    """The reranker's passage: the answers (in question order) then the description.

    Default: answers that are just "Uncertain" are dropped and the parts are joined with spaces. ``compat``
    reproduces the official assembly: plain concatenation, then every case-sensitive "Uncertain" substring
    deleted. A query whose questions fell back (``usable=False``) contributes no answers.
    """
    if compat:
        joined = "".join(answers).replace("Uncertain", "") if usable else ""
        return joined + description
    kept = [a.strip() for a in answers if not is_uncertain(a)] if usable else []
    return " ".join([*kept, description.strip()]).strip()
