"""BLIP / LAVIS / ALBEF annotation JSON.

Training files list one pair per entry, ``{"image": path, "caption": text, "image_id": id}``; evaluation
files list one image per entry with all its captions, ``{"image": path, "caption": [text, ...]}``. A split is
named by the file (``coco_karpathy_test.json`` -> ``test``), or given; a folder is read file by file.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlret.data._io import read_json
from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError

_SPLIT_IN_NAME = re.compile(r"(?:^|[_\-.])(train|val|test)\.json$")


def split_from_filename(path: Path) -> str | None:
    """``test`` for ``coco_karpathy_test.json``; None when the name carries no split."""
    match = _SPLIT_IN_NAME.search(path.name)
    return match.group(1) if match else None


def read_lavis(
    path: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
) -> RetrievalDataset:
    """Read one LAVIS annotation file, or every ``*_{train,val,test}.json`` in a folder."""
    path = Path(path)
    files = sorted(p for p in path.glob("*.json") if split_from_filename(p)) if path.is_dir() else [path]
    if not files:
        raise DataError(path, None, "no *_train.json, *_val.json or *_test.json files in this folder")
    policy = ErrorPolicy(on_error)
    items: list[Item] = []
    captions: list[Caption] = []
    index: dict[str, int] = {}
    for file in files:
        file_split = split or split_from_filename(file)
        if file_split is None:
            raise DataError(
                file, None, "cannot tell the split from the file name; pass split='train'|'val'|'test'"
            )
        _read_file(file, file_split, policy, items, captions, index)
    root = Path(media_root) if media_root is not None else (path if path.is_dir() else path.parent)
    return RetrievalDataset(items, captions, root, str(path), "lavis", policy.skipped)


def _read_file(
    file: Path,
    split: str,
    policy: ErrorPolicy,
    items: list[Item],
    captions: list[Caption],
    index: dict[str, int],
) -> None:
    entries = read_json(file)
    if not isinstance(entries, list):
        raise DataError(file, "top level", 'expected a list of {"image": ..., "caption": ...} entries')
    for n, entry in enumerate(entries):
        record = f"[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
            policy.bad(file, record, 'expected an object with an "image" path')
            continue
        image = entry["image"]
        record = f"[{n}] ({image})"
        raw = entry.get("caption")
        candidates = raw if isinstance(raw, list) else [raw]
        texts = []
        for k, text in enumerate(candidates):  # under "skip", a bad caption drops only itself
            cleaned = clean_caption(text)
            if cleaned is None:
                where = f"{record} caption[{k}]" if isinstance(raw, list) else record
                policy.bad(file, where, '"caption" must be a non-empty text or a list of non-empty texts')
            else:
                texts.append(cleaned)
        if not texts:
            if isinstance(raw, list):
                policy.bad(file, record, "no usable caption is left")
            continue
        if image in index:
            if items[index[image]].split != split:
                policy.bad(file, record, f"image also appears in split {items[index[image]].split!r}")
                continue
        else:
            index[image] = len(items)
            items.append(Item(image, image, split))
        captions.extend(Caption(t, image) for t in texts)
