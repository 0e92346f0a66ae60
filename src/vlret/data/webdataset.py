"""Webdataset shards as a dataset: tar files whose members are grouped into samples by key.

``shards/{00000..00099}.tar`` (brace-expanded, as webdataset and img2dataset write it), one ``.tar`` file or
a folder of them. A sample is the members that share a key (the member's path up to the first dot of its
file name: ``000123.jpg``, ``000123.txt``, ``000123.json``); its image becomes an item whose path is
``SHARD.tar/MEMBER`` (read in place, :mod:`vlret.data.tar_members`) and whose id is the key, and its caption
comes from the ``.txt`` member, else the ``caption`` field of the ``.json`` member. A sample without an
image, with a ``.json`` that is not JSON, or with two members of one extension, a member name that leaves
the shard, a name used twice and a shard cut short (no end-of-archive marker) are reported (or skipped and
listed with ``on_error="skip"``); a sample without a caption is an item without captions.
Every item is in split ``split`` (``train`` by default): shards carry no splits of their own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from braceexpand import UnbalancedBracesError, braceexpand

from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.data.tar_members import TAR_SUFFIX, member_table, read_member, tar_problems
from vlret.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def shard_files(pattern: str | Path) -> list[Path]:
    """The tar files a pattern names: a brace pattern, one tar, or a folder of tars (sorted)."""
    pattern = str(pattern)
    if Path(pattern).is_dir():
        found = sorted(Path(pattern).glob(f"*{TAR_SUFFIX}"))
        if not found:
            raise DataError(pattern, None, "a folder without .tar shards")
        return found
    try:
        files = [Path(p) for p in braceexpand(pattern)]
    except UnbalancedBracesError:
        raise DataError(
            pattern, None, "unbalanced braces: expected a pattern such as 'shards/{00000..00099}.tar'"
        ) from None
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DataError(missing[0], None, f"shard not found ({len(missing)} of {len(files)} missing)")
    return files


def is_webdataset(path: str | Path) -> bool:
    """Whether ``path`` names webdataset shards (a tar, a brace pattern of tars, or a folder of tars)."""
    text = str(path)
    if "{" in text and text.endswith(TAR_SUFFIX):
        return True
    path = Path(path)
    return (path.is_file() and path.suffix.lower() == TAR_SUFFIX) or (
        path.is_dir() and any(path.glob(f"*{TAR_SUFFIX}"))
    )


def _split_key(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def read_webdataset(
    path: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    split: str = "train",
) -> RetrievalDataset:
    """Read webdataset shards into a :class:`RetrievalDataset` (see the module docstring). Item paths are
    relative to the shards' common folder (``media_root`` when given)."""
    shards = shard_files(path)
    folders = [str(s.resolve().parent) for s in shards]
    root = Path(media_root) if media_root else Path(os.path.commonpath(folders))
    policy = ErrorPolicy(on_error)
    items: list[Item] = []
    captions: list[Caption] = []
    for shard in shards:
        for problem in tar_problems(shard):
            policy.bad(shard, None, problem)
        samples: dict[str, dict[str, str]] = {}
        twice: set[str] = set()
        for name in member_table(shard):
            if name.startswith("/") or ".." in name.split("/"):
                policy.bad(shard, name, "a member name that leaves the shard (absolute, or with ..)")
                continue
            key, extension = _split_key(name)
            if extension in samples.get(key, {}):  # 0001.jpg and 0001.JPG, say: one sample would hide one
                twice.add(key)
            samples.setdefault(key, {})[extension] = name
        relative = shard.resolve().relative_to(root.resolve()).as_posix()
        for key, members in samples.items():
            image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
            if key in twice:
                policy.bad(shard, key, f"two members of sample {key!r} have one extension; which is meant?")
                continue
            if image is None:
                policy.bad(shard, key, f"sample {key!r} has no image ({', '.join(sorted(members))})")
                continue
            try:
                text = _caption(shard, members)
            except ValueError as exc:
                policy.bad(shard, members["json"], str(exc))
                continue
            item_id = key if len(shards) == 1 else f"{shard.stem}/{key}"
            items.append(Item(item_id, f"{relative}/{image}", split))
            if text:
                captions.append(Caption(text, item_id))
    if not items:
        raise DataError(path, None, "no samples with an image in these shards")
    return RetrievalDataset(items, captions, root, str(path), "webdataset", policy.skipped)


def _caption(shard: Path, members: dict[str, str]) -> str | None:
    if "txt" in members:
        return clean_caption(read_member(shard, members["txt"]).decode("utf-8", errors="replace"))
    if "json" in members:
        try:
            record = json.loads(read_member(shard, members["json"]))
        except ValueError as exc:  # a sample's metadata that cannot be read is a bad record, not no caption
            raise ValueError(f"not valid JSON ({exc})") from None
        return clean_caption(record.get("caption")) if isinstance(record, dict) else None
    return None
