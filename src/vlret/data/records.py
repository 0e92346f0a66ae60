"""The one record model every dataset reader produces.

A dataset is a list of gallery items (an image or a video with an id, a media path and a split) and a list
of captions, each pointing at one item. An item may have any number of captions (COCO has 5-7), which is why
protocols work from the caption -> item map rather than assuming 5 captions per image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Item:
    """One gallery item: an image or video file."""

    id: str
    path: str  # relative to the dataset's media root, or absolute
    split: str


@dataclass(frozen=True)
class Caption:
    """One caption of one item."""

    text: str
    item_id: str


@dataclass(frozen=True)
class Skipped:
    """A record a reader or loader left out under ``on_error="skip"``, and why."""

    file: str
    record: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "record": self.record, "reason": self.reason}


@dataclass
class RetrievalDataset:
    """Items and captions of one or more splits, with the maps the protocols need.

    ``captions`` are ordered so that an item's captions follow the order the source file gave them;
    ``caption_to_item[c]`` is the index (into ``items``) of the item caption ``c`` describes.
    """

    items: list[Item]
    captions: list[Caption]
    media_root: Path
    source: str = ""
    format: str = ""
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._index = {item.id: i for i, item in enumerate(self.items)}
        if len(self._index) != len(self.items):
            seen: set[str] = set()
            dup = next(item.id for item in self.items if item.id in seen or seen.add(item.id))
            raise ValueError(f"{self.source}: item id {dup!r} appears more than once")
        missing = [c.item_id for c in self.captions if c.item_id not in self._index]
        if missing:
            raise ValueError(f"{self.source}: caption refers to unknown item id {missing[0]!r}")

    # ----- sizes and maps -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def splits(self) -> list[str]:
        """Split names in order of first appearance."""
        return list(dict.fromkeys(item.split for item in self.items))

    @cached_property
    def caption_to_item(self) -> np.ndarray:
        """``[n_captions]`` int64: index of each caption's item."""
        return np.fromiter(
            (self._index[c.item_id] for c in self.captions), dtype=np.int64, count=len(self.captions)
        )

    @cached_property
    def item_to_captions(self) -> list[list[int]]:
        """For each item, the indices of its captions (possibly empty)."""
        groups: list[list[int]] = [[] for _ in self.items]
        for c, item in enumerate(self.caption_to_item):
            groups[item].append(c)
        return groups

    def item_index(self, item_id: str) -> int:
        return self._index[item_id]

    def media_path(self, item: Item) -> Path:
        """Absolute path of an item's file (absolute paths in the source are kept)."""
        path = Path(item.path)
        return path if path.is_absolute() else self.media_root / path

    # ----- views ----------------------------------------------------------------------------------------
    def split(self, name: str) -> RetrievalDataset:
        """The items of one split and their captions. Raises ``KeyError`` listing the splits that exist."""
        if name not in self.splits:
            raise KeyError(f"{self.source}: no split {name!r}; the data has {self.splits}")
        return self.select(i for i, item in enumerate(self.items) if item.split == name)

    def select(self, item_indices: Iterable[int]) -> RetrievalDataset:
        """A dataset of the given items (in the given order) and their captions."""
        keep = [self.items[i] for i in item_indices]
        ids = {item.id for item in keep}
        order = {item.id: k for k, item in enumerate(keep)}
        captions = sorted(
            (c for c in self.captions if c.item_id in ids),
            key=lambda c: order[c.item_id],  # stable: keeps an item's caption order
        )
        return RetrievalDataset(keep, captions, self.media_root, self.source, self.format, list(self.skipped))

    def drop_items(self, item_ids: set[str]) -> RetrievalDataset:
        """The dataset without the given items and their captions."""
        return self.select(i for i, item in enumerate(self.items) if item.id not in item_ids)

    # ----- summary --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts per split: items, captions, and the captions-per-item histogram."""
        out: dict[str, dict] = {}
        per_item = [len(c) for c in self.item_to_captions]
        for split in self.splits:
            idx = [i for i, item in enumerate(self.items) if item.split == split]
            counts = [per_item[i] for i in idx]
            hist: dict[str, int] = {}
            for n in sorted(counts):
                hist[str(n)] = hist.get(str(n), 0) + 1
            words = [len(self.captions[c].text.split()) for i in idx for c in self.item_to_captions[i]]
            out[split] = {
                "items": len(idx),
                "captions": sum(counts),
                "captions_per_item": hist,
                "mean_caption_words": round(float(np.mean(words)), 2) if words else 0.0,
            }
        return {"source": self.source, "format": self.format, "splits": out, "skipped": len(self.skipped)}
