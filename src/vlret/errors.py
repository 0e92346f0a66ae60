"""Errors that name what was wrong and where, so a user can fix their input."""

from __future__ import annotations


class VlretError(Exception):
    """Base class of every error vlret raises on purpose."""


class DataError(VlretError):
    """Bad input data: the message names the file, the record (line, index or key) and what was expected."""

    def __init__(self, file: str, record: str | int | None, problem: str):
        self.file = str(file)
        self.record = record
        self.problem = problem
        where = self.file if record is None else f"{self.file}: {record}"
        super().__init__(f"{where}: {problem}")


class ConfigError(VlretError):
    """An invalid option, model name or configuration key."""


class NonFiniteScoreError(VlretError):
    """A score matrix holds NaN or an infinity; ``row`` and ``column`` locate the first one."""

    def __init__(self, row: int, column: int, value: float):
        self.row, self.column, self.value = row, column, value
        super().__init__(
            f"non-finite score {value} at row {row}, column {column}; scores must be finite numbers"
        )


class TrainingError(VlretError):
    """Training cannot go on: a non-finite loss or weights, or a checkpoint that cannot be written."""
