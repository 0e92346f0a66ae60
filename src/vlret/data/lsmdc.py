"""LSMDC (the Large Scale Movie Description Challenge) in the layout its text-video retrieval task ships.

Files: tab-separated, no header, one clip per line:
``clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence`` in

- ``LSMDC16_annos_training.csv`` (train), ``LSMDC16_annos_val.csv`` (val),
- ``LSMDC16_challenge_1000_publictect.csv`` (test: the 1,000-clip retrieval test).

A clip id is ``<movie>_<start>-<end>`` (``0001_American_Beauty_00.00.51.926-00.00.54.129``); its file is
``<media root>/<movie>/<clip_id><suffix>`` (``.avi`` as released). One sentence per clip.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError

FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
COLUMNS = 6


def lsmdc_splits(folder: Path) -> list[str]:
    """The splits whose csv is in ``folder``."""
    return [s for s, name in FILES.items() if (folder / name).is_file()]


def read_lsmdc(
    folder: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    splits: list[str] | None = None,
    suffix: str = ".avi",
) -> RetrievalDataset:
    """The given splits (default: every csv there) of an LSMDC folder; media under ``media_root`` (default
    ``folder/videos``)."""
    folder = Path(folder)
    policy = ErrorPolicy(on_error)
    chosen = splits or lsmdc_splits(folder)
    if not chosen:
        raise DataError(folder, None, f"no LSMDC annotation files ({', '.join(FILES.values())})")
    items: list[Item] = []
    captions: list[Caption] = []
    seen: set[str] = set()
    for split in chosen:
        file = folder / FILES[split]
        if not file.is_file():
            raise DataError(file, None, f"file not found (the {split} split of LSMDC)")
        with open(file, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not row:
                    continue
                clip = row[0].strip()
                text = clean_caption(row[COLUMNS - 1]) if len(row) >= COLUMNS else None
                if "_" not in clip or text is None:
                    policy.bad(
                        file, f"line {n}", f"expected {COLUMNS} tab-separated fields: clip id ... sentence"
                    )
                    continue
                if clip in seen:
                    policy.bad(file, f"line {n}", f"clip {clip!r} listed twice")
                    continue
                seen.add(clip)
                movie = clip.rsplit("_", 1)[0]
                items.append(Item(clip, f"{movie}/{clip}{suffix}", split))
                captions.append(Caption(text, clip))
    root = Path(media_root) if media_root is not None else folder / "videos"
    dataset = RetrievalDataset(items, captions, root, str(folder), "lsmdc")
    dataset.skipped.extend(policy.skipped)
    return dataset
