"""DiDeMo's moment annotations as paragraph-to-video retrieval (the protocol of CLIP4Clip and its successors).

Files: ``{split}_data.json`` (``train``, ``val``, ``test``), each a list of moments
``{"video": "<file name>", "description": "...", "times": [[start, end], ...], ...}``. A video has several
moments; its one query is the paragraph of all its descriptions joined with a space, in the order the file
lists them (``paragraph=False`` keeps each description as its own caption instead). Videos are
``<media root>/<video>``; ``suffix`` replaces the file name's extension for transcoded copies (``.mp4``).
"""

from __future__ import annotations

from pathlib import Path

from vlret.data._io import read_json
from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError

SPLITS = ("train", "val", "test")


def didemo_splits(folder: Path) -> list[str]:
    """The splits with a ``{split}_data.json`` in ``folder``."""
    return [s for s in SPLITS if (folder / f"{s}_data.json").is_file()]


def read_didemo(
    folder: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    splits: list[str] | None = None,
    paragraph: bool = True,
    suffix: str | None = None,
) -> RetrievalDataset:
    """The given splits (default: every ``{split}_data.json`` there) of a DiDeMo folder; media under
    ``media_root`` (default ``folder/videos``)."""
    folder = Path(folder)
    policy = ErrorPolicy(on_error)
    chosen = splits or didemo_splits(folder)
    if not chosen:
        raise DataError(folder, None, "no DiDeMo annotation files ({train,val,test}_data.json)")
    items: list[Item] = []
    captions: list[Caption] = []
    for split in chosen:
        file = folder / f"{split}_data.json"
        moments = read_json(file)
        if not isinstance(moments, list):
            raise DataError(file, "top level", 'expected a list of {"video": ..., "description": ...}')
        texts: dict[str, list[str]] = {}  # video -> descriptions, in file order
        for n, moment in enumerate(moments):
            video = moment.get("video") if isinstance(moment, dict) else None
            text = clean_caption(moment.get("description")) if isinstance(moment, dict) else None
            if not isinstance(video, str) or not video or text is None:
                policy.bad(file, f"[{n}]", 'expected {"video": "<file name>", "description": "<text>"}')
                continue
            texts.setdefault(video, []).append(text)
        for video, sentences in texts.items():
            path = video if suffix is None else str(Path(video).with_suffix(suffix))
            items.append(Item(video, path, split))
            queries = [" ".join(sentences)] if paragraph else sentences
            captions.extend(Caption(t, video) for t in queries)
    root = Path(media_root) if media_root is not None else folder / "videos"
    dataset = RetrievalDataset(items, captions, root, str(folder), "didemo")
    dataset.skipped.extend(policy.skipped)
    return dataset
