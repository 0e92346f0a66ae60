"""Evaluation protocols: which split, how many captions per image, and how the gallery is folded.

- ``flickr30k-1k``: the 1,000-image Karpathy test split, 5 captions per image.
- ``coco-5k``: the 5,000-image Karpathy test split, the first 5 captions of each image (25,000).
- ``coco-1k``: the same 5,000 images cut into 5 folds of 1,000 consecutive images (and their captions),
  metrics averaged over the folds. A separate table from ``coco-5k``; never the first fold alone.
- ``generic``: any split of any dataset, every caption kept, one gallery.
- ``first-1k``: the first 1,000 items of a split (all of them when it has fewer), 5 captions each: how SCAN,
  SGRAF and VSL validate during training on the 5,000-image COCO dev split (and the 1,014-image F30K one).

Checkpoints are never chosen on the test split: training validates on ``val`` and says so in its results.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlret.data.records import RetrievalDataset
from vlret.errors import ConfigError, DataError


@dataclass(frozen=True)
class Protocol:
    name: str
    default_split: str
    expected_items: int | None  # None: any gallery size
    captions_per_item: int | None  # keep the first k captions of each item; None: keep all
    folds: int  # consecutive equal folds; metrics are averaged over them
    first_items: int | None = None  # only the split's first N items (and their captions); None: all

    def describe(self) -> dict:
        caption_rule = (
            "all captions of each item"
            if self.captions_per_item is None
            else f"first {self.captions_per_item} captions of each item"
        )
        fold_rule = (
            "one gallery"
            if self.folds == 1
            else f"{self.folds} folds of consecutive items (and their captions), metrics averaged over folds"
        )
        described = {
            "name": self.name,
            "caption_rule": caption_rule,
            "fold_rule": fold_rule,
            "folds": self.folds,
        }
        if self.first_items is not None:
            described["item_rule"] = f"the first {self.first_items} items of the split"
        return described


PROTOCOLS = {
    "generic": Protocol("generic", "test", None, None, 1),
    "flickr30k-1k": Protocol("flickr30k-1k", "test", 1000, 5, 1),
    "coco-5k": Protocol("coco-5k", "test", 5000, 5, 1),
    "coco-1k": Protocol("coco-1k", "test", 5000, 5, 5),
    "first-1k": Protocol("first-1k", "val", None, 5, 1, first_items=1000),
}
DIRECTIONS = ("both", "t2i")


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


@dataclass
class Fold:
    """A contiguous block of items and the contiguous block of their captions."""

    item_start: int
    item_stop: int
    caption_start: int
    caption_stop: int


def caption_selection(dataset: RetrievalDataset, protocol: Protocol) -> list[int]:
    """Indices of the captions the protocol keeps, grouped by item in item order."""
    keep: list[int] = []
    for item, caps in zip(dataset.items, dataset.item_to_captions, strict=True):
        if protocol.captions_per_item is not None:
            if len(caps) < protocol.captions_per_item:
                raise DataError(
                    dataset.source,
                    f"item {item.id!r}",
                    f"{protocol.name} needs {protocol.captions_per_item} captions per item, found {len(caps)}",
                )
            caps = caps[: protocol.captions_per_item]
        keep.extend(caps)
    return keep


def prepare(dataset: RetrievalDataset, protocol: Protocol) -> tuple[RetrievalDataset, list[int], list[Fold]]:
    """Apply the caption rule and check the gallery size of an already selected split.

    Returns the dataset with captions reordered by item, the indices of the kept captions in the *input*
    dataset's caption order (to pick rows of a precomputed score matrix), and the folds.
    """
    original_rows = None  # the input's caption indices, when only the first items are kept
    if protocol.first_items is not None and len(dataset.items) > protocol.first_items:
        items = dataset.items[: protocol.first_items]
        kept = {item.id for item in items}
        original_rows = [c for c, caption in enumerate(dataset.captions) if caption.item_id in kept]
        dataset = RetrievalDataset(
            items,
            [dataset.captions[c] for c in original_rows],
            dataset.media_root,
            dataset.source,
            dataset.format,
            list(dataset.skipped),
        )
    n = len(dataset.items)
    if protocol.expected_items is not None and n != protocol.expected_items:
        raise DataError(
            dataset.source,
            None,
            f"protocol {protocol.name} expects {protocol.expected_items} items in the split, found {n}",
        )
    if n == 0:
        raise DataError(dataset.source, None, "the split has no items")
    keep = caption_selection(dataset, protocol)
    captions = [dataset.captions[c] for c in keep]
    if original_rows is not None:
        keep = [original_rows[c] for c in keep]
    selected = RetrievalDataset(
        dataset.items, captions, dataset.media_root, dataset.source, dataset.format, list(dataset.skipped)
    )
    if n % protocol.folds:
        raise DataError(dataset.source, None, f"{n} items do not split into {protocol.folds} equal folds")
    size = n // protocol.folds
    cap_item = selected.caption_to_item
    folds = []
    for f in range(protocol.folds):
        lo, hi = f * size, (f + 1) * size
        in_fold = ((cap_item >= lo) & (cap_item < hi)).nonzero()[0]
        folds.append(
            Fold(lo, hi, int(in_fold[0]) if len(in_fold) else 0, int(in_fold[-1]) + 1 if len(in_fold) else 0)
        )
    return selected, keep, folds
