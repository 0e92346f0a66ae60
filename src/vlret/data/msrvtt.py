"""MSR-VTT's annotation files into the record model (videos as items, sentences as captions).

Files (MSR-VTT's release and the split lists every text-video paper since JSFusion / CLIP4Clip uses):

- ``MSRVTT_data.json``: ``{"videos": [{"video_id": "video0", "split": "train" | "validate" | "test", ...}],
  "sentences": [{"video_id": "video0", "caption": "...", "sen_id": 0}, ...]}`` (20 sentences per video);
- ``MSRVTT_train.9k.csv`` (column ``video_id``): the 9k training videos, each with all its sentences;
- ``MSRVTT_JSFUSION_test.csv`` (columns ``key, vid_key, video_id, sentence``): the 1k-A test, one sentence
  per video, the csv's own.

With the two csv files the splits are ``train`` (9k) and ``test`` (1k-A); without them, the official split of
the json (``validate`` read as ``val``) with all sentences. Videos are ``<media root>/<video_id>.mp4``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vlret.data._io import read_json
from vlret.data._policy import clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError

OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}
DATA_JSON, TRAIN_CSV, TEST_CSV = "MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"


def is_msrvtt(path: Path) -> bool:
    """True for ``MSRVTT_data.json`` or a folder holding it."""
    return path.name == DATA_JSON or (path.is_dir() and (path / DATA_JSON).is_file())


def read_msrvtt_folder(
    path: str | Path,
    media_root: str | Path | None = None,
    on_error: str = "raise",
    split_lists: bool = True,
) -> RetrievalDataset:
    """MSR-VTT from its folder (or its ``MSRVTT_data.json``): 9k train + 1k-A test when both csv lists
    are beside the json and ``split_lists`` is on, else the official split. Any bad record raises."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    lists = [folder / TRAIN_CSV, folder / TEST_CSV]
    if split_lists and all(f.is_file() for f in lists):
        return read_msrvtt(folder / DATA_JSON, *lists, media_root=media_root)
    return read_msrvtt(folder / DATA_JSON, media_root=media_root)


def _sentences(data_json: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    raw = read_json(data_json)
    if not isinstance(raw, dict) or "videos" not in raw or "sentences" not in raw:
        raise DataError(data_json, None, 'expected {"videos": [...], "sentences": [...]}')
    splits: dict[str, str] = {}
    for n, video in enumerate(raw["videos"]):
        if (
            not isinstance(video, dict)
            or "video_id" not in video
            or video.get("split") not in OFFICIAL_SPLITS
        ):
            raise DataError(
                data_json, f"videos[{n}]", 'expected {"video_id": ..., "split": train|validate|test}'
            )
        splits[video["video_id"]] = OFFICIAL_SPLITS[video["split"]]
    texts: dict[str, list[str]] = {}
    for n, sentence in enumerate(raw["sentences"]):
        text = clean_caption(sentence.get("caption")) if isinstance(sentence, dict) else None
        video_id = sentence.get("video_id") if isinstance(sentence, dict) else None
        if text is None or video_id not in splits:
            raise DataError(data_json, f"sentences[{n}]", "expected a known video_id and a non-empty caption")
        texts.setdefault(video_id, []).append(text)
    return splits, texts


def _csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, "line 1", f"no column {missing[0]!r}; the header has {reader.fieldnames}")
        return list(reader)


def read_msrvtt(
    data_json: str | Path,
    train_csv: str | Path | None = None,
    test_csv: str | Path | None = None,
    media_root: str | Path | None = None,
    suffix: str = ".mp4",
) -> RetrievalDataset:
    """MSR-VTT as described in the module docstring; ``media_root`` defaults to ``videos/all`` beside the json."""
    data_json = Path(data_json)
    splits, texts = _sentences(data_json)
    items: list[Item] = []
    captions: list[Caption] = []

    def add(video_id: str, split: str, sentences: list[str], where: Path, record: str) -> None:
        if video_id not in splits:
            raise DataError(where, record, f"video {video_id!r} is not in {data_json.name}")
        items.append(Item(video_id, f"{video_id}{suffix}", split))
        captions.extend(Caption(t, video_id) for t in sentences)

    if train_csv is None and test_csv is None:
        for video_id, split in splits.items():
            add(video_id, split, texts.get(video_id, []), data_json, video_id)
    else:
        test_ids: set[str] = set()
        if test_csv is not None:
            for n, row in enumerate(_csv_rows(Path(test_csv), ("video_id", "sentence")), start=2):
                text = clean_caption(row["sentence"])
                if text is None:
                    raise DataError(test_csv, f"line {n}", "empty sentence")
                add(row["video_id"].strip(), "test", [text], Path(test_csv), f"line {n}")
                test_ids.add(row["video_id"].strip())
        if train_csv is not None:
            for n, row in enumerate(_csv_rows(Path(train_csv), ("video_id",)), start=2):
                video_id = row["video_id"].strip()
                if video_id in test_ids:
                    raise DataError(train_csv, f"line {n}", f"video {video_id!r} is also a test video")
                add(video_id, "train", texts.get(video_id, []), Path(train_csv), f"line {n}")
    root = Path(media_root) if media_root is not None else data_json.parent / "videos" / "all"
    return RetrievalDataset(items, captions, root, str(data_json), "msrvtt")
