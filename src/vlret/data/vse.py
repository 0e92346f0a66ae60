"""The VSE / GPO / AVSE text layout: ``{split}_caps.txt``, ``{split}_ids.txt`` and ``id_mapping.json``.

``{split}_caps.txt`` has one caption per line, 5 consecutive lines per image. ``{split}_ids.txt`` lists the
integer image ids either once per image (train files) or once per caption (test files repeat each id 5 times);
the rule the released loaders use is: if the two files have the same number of lines the id of caption ``c`` is
line ``c``, otherwise it is line ``c // 5``. ``id_mapping.json`` maps each id (as a string) to an image path.
"""

from __future__ import annotations

from pathlib import Path

from vlret.data._io import read_json
from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError

CAPTIONS_PER_IMAGE = 5


def vse_splits(folder: Path) -> list[str]:
    """Split names that have a ``{split}_caps.txt`` in ``folder``."""
    return sorted(p.name[: -len("_caps.txt")] for p in folder.glob("*_caps.txt"))


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(
            path, None, "file not found (the VSE layout needs {split}_caps.txt and {split}_ids.txt)"
        )
    return path.read_text(encoding="utf-8").splitlines()


def read_vse(
    folder: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    splits: list[str] | None = None,
) -> RetrievalDataset:
    """Read the given splits (default: every split with a captions file) of a VSE-layout folder."""
    folder = Path(folder)
    policy = ErrorPolicy(on_error)
    mapping_file = folder / "id_mapping.json"
    mapping = read_json(mapping_file)
    if not isinstance(mapping, dict):
        raise DataError(
            mapping_file, "top level", "expected an object mapping image id (string) -> image path"
        )
    items: list[Item] = []
    captions: list[Caption] = []
    seen: set[str] = set()
    for split in splits or vse_splits(folder):
        caps_file, ids_file = folder / f"{split}_caps.txt", folder / f"{split}_ids.txt"
        caps, ids = _lines(caps_file), _lines(ids_file)
        per_caption = len(ids) == len(caps)
        if not per_caption and len(caps) != CAPTIONS_PER_IMAGE * len(ids):
            raise DataError(
                ids_file,
                None,
                f"{len(ids)} ids for {len(caps)} captions: expected one id per caption "
                f"or one per {CAPTIONS_PER_IMAGE} captions",
            )
        for c, raw in enumerate(caps):
            id_line = c if per_caption else c // CAPTIONS_PER_IMAGE
            image_id = ids[id_line].strip()
            if not image_id.lstrip("-").isdigit():
                policy.bad(ids_file, f"line {id_line + 1}", f"expected an integer image id, got {image_id!r}")
                continue
            image_id = str(int(image_id))
            if image_id not in mapping:
                policy.bad(mapping_file, f"key {image_id!r}", f"no path for image id used by {ids_file.name}")
                continue
            text = clean_caption(raw)
            if text is None:
                policy.bad(caps_file, f"line {c + 1}", "empty caption")
                continue
            item_id = f"{split}:{image_id}"
            if item_id not in seen:
                seen.add(item_id)
                items.append(Item(item_id, str(mapping[image_id]), split))
            captions.append(Caption(text, item_id))
    if not items and not policy.skipped:
        raise DataError(folder, None, "no {split}_caps.txt files found")
    root = Path(media_root) if media_root is not None else folder
    return RetrievalDataset(items, captions, root, str(folder), "vse", policy.skipped)
