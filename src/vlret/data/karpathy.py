"""Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_flickr8k.json``).

Layout: ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", "tokens"?}, ...]}, ...]}``.
COCO's ``restval`` images are part of training (the Karpathy "train" = train + restval), so by default they are
read as split ``train``. An item's id is its relative path (``filepath/filename``), which is unique in all three.
"""

from __future__ import annotations

from pathlib import Path

from vlret.data._io import read_json, write_json
from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset


def read_karpathy(
    path: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    merge_restval: bool = True,
) -> RetrievalDataset:
    """Read a Karpathy split file. ``media_root`` defaults to the file's folder."""
    path = Path(path)
    data = read_json(path)
    policy = ErrorPolicy(on_error)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        policy.on_error = "raise"  # nothing can be read from a file of the wrong shape
        policy.bad(path, "top level", 'expected an object with an "images" list (Karpathy split format)')
    items: list[Item] = []
    captions: list[Caption] = []
    seen: set[str] = set()
    for n, entry in enumerate(data["images"]):
        record = f"images[{n}]"
        if not isinstance(entry, dict):
            policy.bad(path, record, "expected an object")
            continue
        filename, split = entry.get("filename"), entry.get("split")
        if not isinstance(filename, str) or not filename:
            policy.bad(path, record, 'missing "filename" (a non-empty string)')
            continue
        record = f"images[{n}] ({filename})"
        if not isinstance(split, str) or not split:
            policy.bad(path, record, 'missing "split" (train, val, test or restval)')
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            policy.bad(path, record, 'missing "sentences" (a non-empty list of {"raw": text})')
            continue
        filepath = entry.get("filepath")
        if filepath is not None and not isinstance(filepath, str):
            policy.bad(path, record, f'"filepath" must be a string (a folder name), got {filepath!r}')
            continue
        texts = []
        for k, sentence in enumerate(sentences):  # under "skip", a bad caption drops only itself
            text = clean_caption(sentence.get("raw") if isinstance(sentence, dict) else None)
            if text is None:
                policy.bad(path, f"{record} sentences[{k}]", 'empty or missing "raw" caption text')
            else:
                texts.append(text)
        if not texts:
            policy.bad(path, record, "no usable caption is left")
            continue
        rel = f"{filepath}/{filename}" if filepath else filename
        if rel in seen:
            policy.bad(path, record, f"image {rel!r} listed twice")
            continue
        seen.add(rel)
        if merge_restval and split == "restval":
            split = "train"
        items.append(Item(rel, rel, split))
        captions.extend(Caption(t, rel) for t in texts)
    root = Path(media_root) if media_root is not None else path.parent
    return RetrievalDataset(items, captions, root, str(path), "karpathy", policy.skipped)


def _tokens(text: str) -> list[str]:
    return "".join(ch.lower() if ch.isalnum() or ch.isspace() else " " for ch in text).split()


def write_karpathy(dataset: RetrievalDataset, path: str | Path, name: str = "vlret") -> None:
    """Write a dataset as a Karpathy split file (``filepath``/``filename`` come from the item's path)."""
    images = []
    sent_id = 0
    for img_id, (item, caps) in enumerate(zip(dataset.items, dataset.item_to_captions, strict=True)):
        rel = Path(item.path)
        sentences = []
        for c in caps:
            text = dataset.captions[c].text
            sentences.append({"raw": text, "tokens": _tokens(text), "imgid": img_id, "sentid": sent_id})
            sent_id += 1
        images.append(
            {
                "filepath": rel.parent.as_posix() if rel.parent != Path(".") else "",
                "filename": rel.name,
                "imgid": img_id,
                "split": item.split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
    write_json(path, {"images": images, "dataset": name})
