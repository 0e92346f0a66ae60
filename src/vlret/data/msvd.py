"""MSVD (the Microsoft Research Video Description corpus) in the layout text-video retrieval papers use.

Files in one folder:

- ``train_list.txt``, ``val_list.txt``, ``test_list.txt``: video ids, one per line (1,200 / 100 / 670);
- the captions, either ``raw-captions.pkl`` (a dict: video id -> list of captions, each a list of words; read
  with an unpickler that accepts plain containers and strings only, so nothing is executed) or
  ``captions.txt`` (one ``<video id> <caption>`` per line, as in ``AllVideoDescriptions.txt``).

Every caption of a video is a query (about 41 per video): the MSVD convention. Videos are
``<media root>/<video id><suffix>`` (``YouTubeClips/*.avi`` as released).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError

SPLITS = ("train", "val", "test")
PICKLE_FILE = "raw-captions.pkl"
TEXT_FILE = "captions.txt"


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers; refuses every class or function reference."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain containers and strings are read")


def msvd_splits(folder: Path) -> list[str]:
    """The splits with a ``{split}_list.txt`` in ``folder``."""
    return [s for s in SPLITS if (folder / f"{s}_list.txt").is_file()]


def _captions_from_pickle(file: Path) -> dict[str, list[str]]:
    try:
        with open(file, "rb") as f:
            raw = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(file, None, f"cannot read ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(file, "top level", "expected a dict: video id -> list of captions")
    out: dict[str, list[str]] = {}
    for video, caps in raw.items():
        if not isinstance(caps, list):
            raise DataError(file, repr(video), "expected a list of captions")
        out[str(video)] = [" ".join(c) if isinstance(c, list | tuple) else c for c in caps]
    return out


def _captions_from_text(file: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            raise DataError(file, f"line {n}", "expected '<video id> <caption>'")
        out.setdefault(parts[0], []).append(parts[1])
    return out


def read_msvd(
    folder: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    splits: list[str] | None = None,
    suffix: str = ".avi",
) -> RetrievalDataset:
    """The given splits (default: every ``{split}_list.txt`` there) of an MSVD folder; media under
    ``media_root`` (default ``folder/YouTubeClips``)."""
    folder = Path(folder)
    policy = ErrorPolicy(on_error)
    if (folder / PICKLE_FILE).is_file():
        source, texts = folder / PICKLE_FILE, _captions_from_pickle(folder / PICKLE_FILE)
    elif (folder / TEXT_FILE).is_file():
        source, texts = folder / TEXT_FILE, _captions_from_text(folder / TEXT_FILE)
    else:
        raise DataError(folder, None, f"no MSVD captions ({PICKLE_FILE} or {TEXT_FILE})")
    chosen = splits or msvd_splits(folder)
    if not chosen:
        raise DataError(folder, None, "no MSVD split lists ({train,val,test}_list.txt)")
    items: list[Item] = []
    captions: list[Caption] = []
    for split in chosen:
        file = folder / f"{split}_list.txt"
        if not file.is_file():
            raise DataError(file, None, f"file not found (the {split} split of MSVD)")
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            video = line.strip()
            if not video:
                continue
            sentences = [t for t in (clean_caption(c) for c in texts.get(video, [])) if t]
            if not sentences:
                policy.bad(file, f"line {n}", f"video {video!r} has no caption in {source.name}")
                continue
            items.append(Item(video, f"{video}{suffix}", split))
            captions.extend(Caption(t, video) for t in sentences)
    root = Path(media_root) if media_root is not None else folder / "YouTubeClips"
    dataset = RetrievalDataset(items, captions, root, str(folder), "msvd")
    dataset.skipped.extend(policy.skipped)
    return dataset
