"""How readers handle a bad record: raise a :class:`DataError`, or skip it and remember why."""

from __future__ import annotations

from typing import Literal

from vlret.data.records import Skipped
from vlret.errors import DataError

OnError = Literal["raise", "skip"]


class ErrorPolicy:
    """Collects skipped records under ``on_error="skip"``; raises under ``"raise"``."""

    def __init__(self, on_error: OnError = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.skipped: list[Skipped] = []

    def bad(self, file: str, record: str | int, problem: str) -> None:
        """Report one bad record: raises, or records it and returns so the caller can skip it."""
        if self.on_error == "raise":
            raise DataError(
                file, record, f"{problem} (--on-error skip leaves such records out and lists them)"
            )
        self.skipped.append(Skipped(str(file), str(record), problem))


def clean_caption(text: object) -> str | None:
    """A caption stripped of surrounding whitespace, or None when it is not a non-empty string."""
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text or None
