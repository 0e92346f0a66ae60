"""Image files: loading with errors that name the file and the item, and a check pass before long jobs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlret.data._policy import ErrorPolicy, OnError
from vlret.data.records import RetrievalDataset
from vlret.errors import DataError

_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


def load_image(path: str | Path, record: str | None = None) -> Image.Image:
    """Open an image fully decoded, in RGB; a missing or corrupt file raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, record, "image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except _READ_ERRORS as exc:
        raise DataError(path, record, f"cannot decode image ({exc})") from None


def check_media(dataset: RetrievalDataset, on_error: OnError = "raise") -> RetrievalDataset:
    """Open every item's file once; under ``skip`` return the dataset without the bad items (and list them).

    Decoding is cheap next to encoding, and failing here means a long encoding job never dies half-way.
    """
    policy = ErrorPolicy(on_error)
    bad: set[str] = set()
    for item in dataset.items:
        try:
            load_image(dataset.media_path(item), f"item {item.id!r}")
        except DataError as exc:
            policy.bad(exc.file, exc.record or item.id, exc.problem)
            bad.add(item.id)
    if not bad:
        return dataset
    kept = dataset.drop_items(bad)
    kept.skipped.extend(policy.skipped)
    return kept
