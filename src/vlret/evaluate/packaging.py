"""What every evaluation entry point shares: the split evaluated, the median and item-rank rules of the
tables its results are compared with, finite features, and the result's form."""

from __future__ import annotations

import numpy as np

from vlret.data.records import RetrievalDataset
from vlret.data.video import is_video_path
from vlret.errors import ConfigError, DataError, VlretError
from vlret.evaluate.encode import EncodedDataset
from vlret.evaluate.metrics import MEDIAN_RULES, mean_metrics, retrieval_metrics
from vlret.evaluate.protocols import Fold, Protocol
from vlret.evaluate.ranking import Ranks
from vlret.evaluate.results import make_result


def select_split(
    dataset: RetrievalDataset, split: str | None, protocol: Protocol
) -> tuple[RetrievalDataset, str]:
    """The split to evaluate (the protocol's default unless named) and its name; an unknown one is an error."""
    name = split or protocol.default_split
    try:
        return dataset.split(name), name
    except KeyError as exc:
        raise DataError(dataset.source, None, str(exc.args[0])) from None


def median_rules(dataset: RetrievalDataset) -> tuple[str, str]:
    """The median-rank rule of each direction (text->item, item->text) in the tables results on ``dataset``
    are compared with (see :mod:`vlret.evaluate.metrics`): ``floor`` for images; CLIP4Clip's for videos,
    whose text->video median is the lower middle rank when a video has several captions (MSVD)."""
    if media_kind(dataset) != "video":
        return "floor", "floor"
    several = any(len(caps) > 1 for caps in dataset.item_to_captions)
    return ("clip4clip-lower" if several else "clip4clip"), "clip4clip"


ITEM_RULE_NOTES = {
    "captions": "captions: every wrong caption at or above the item's best own caption counts (VSE++, SCAN)",
    "items": "items: one entry per other item, the best of its captions (CLIP4Clip's video->text)",
}


def item_rank_rule(dataset: RetrievalDataset) -> str:
    """How item->text ranks are counted in the tables results on ``dataset`` are compared with (see
    :mod:`vlret.evaluate.ranking`): by captions for images (VSE++, SCAN), by items for videos (CLIP4Clip's
    max over each other video's captions; the same as by captions when a video has one caption)."""
    return "items" if media_kind(dataset) == "video" else "captions"


#: how ties between a wrong entry and the right one are ranked (``--ties``)
TIE_CHOICES = ("pessimistic", "optimistic", "released")
TIE_NOTES = {
    "pessimistic": "a wrong entry scoring the same as the right one counts against the model",
    "optimistic": "only wrong entries scoring strictly higher count",
    "last-first": "tied entries ranked by SCAN's np.argsort(...)[::-1]: the higher index first",
    "first-first": "tied entries ranked the lower index first (CLIP4Clip's multi-sentence text->video argsort)",
    "entries": "one entry per tied position, as CLIP4Clip's compute_metrics keeps them",
}


def tie_rules(ties: str, dataset: RetrievalDataset) -> tuple[str, str]:
    """The tie rule of each direction (text->item, item->text) that ``ties`` names for ``dataset``:
    ``released`` follows the protocol's own code, CLIP4Clip's for videos (its multi-sentence text->video
    argsort when a video has several captions, else compute_metrics' entries) and SCAN's for images."""
    if ties not in TIE_CHOICES:
        raise ConfigError(f"ties must be one of {', '.join(TIE_CHOICES)}, not {ties!r}")
    if ties != "released":
        return ties, ties
    if media_kind(dataset) == "video":
        several = any(len(caps) > 1 for caps in dataset.item_to_captions)
        return ("first-first" if several else "entries"), "entries"
    return "last-first", "last-first"


def fold_metrics(
    ranks: list[Ranks], direction: str, medians: tuple[str, str] = ("floor", "floor")
) -> tuple[dict, list[dict]]:
    """(the metrics, averaged over folds where there are several; each fold's metrics)."""
    per_fold = [
        retrieval_metrics(r.t2i, None if direction == "t2i" else r.i2t, medians, r.t2i_ties, r.i2t_ties)
        for r in ranks
    ]
    return (per_fold[0] if len(per_fold) == 1 else mean_metrics(per_fold)), per_fold


def package_result(
    ranks: list[Ranks],
    selected: RetrievalDataset,
    folds: list[Fold],
    protocol: Protocol,
    split: str,
    direction: str,
    item_rule: str | None = None,
    ties: str = "pessimistic",
    **fields,
) -> dict:
    """The result dict of an evaluation: metrics from ``ranks``, counts, protocol, plus ``fields``;
    ``item_rule``: the item->text rule ``ranks`` were counted by (default: the data's, :func:`item_rank_rule`)."""
    medians = median_rules(selected)
    metrics, per_fold = fold_metrics(ranks, direction, medians)
    captions_per_item: dict[str, int] = {}
    for caps in selected.item_to_captions:
        captions_per_item[str(len(caps))] = captions_per_item.get(str(len(caps)), 0) + 1
    pairs = sum((f.caption_stop - f.caption_start) * (f.item_stop - f.item_start) for f in folds)
    return make_result(
        data={
            "source": selected.source,
            "format": selected.format,
            "split": split,
            "media": media_kind(selected),
        },
        protocol={
            **protocol.describe(),
            "split": split,
            "direction": direction,
            "captions_per_item": captions_per_item,
            "median_rank": {"t2i": MEDIAN_RULES[medians[0]], "i2t": MEDIAN_RULES[medians[1]]},
            "i2t_rank": ITEM_RULE_NOTES[item_rule or item_rank_rule(selected)],
            "ties": {
                "rule": ties,
                **{d: TIE_NOTES[r] for d, r in zip(("t2i", "i2t"), tie_rules(ties, selected), strict=True)},
            },
        },
        metrics=metrics,
        folds=per_fold if len(folds) > 1 else None,
        counts={
            "gallery_items": len(selected.items),
            "captions": len(selected.captions),
            "t2i_queries": len(selected.captions),
            "i2t_queries": 0 if direction == "t2i" else len(selected.items),
            "pairs_scored": pairs,
        },
        skipped=[s.as_dict() for s in selected.skipped],
        **fields,
    )


def media_kind(dataset: RetrievalDataset) -> str:
    """``"video"`` when every item is a video file, ``"image"`` when none is, else ``"mixed"``."""
    videos = sum(is_video_path(item.path) for item in dataset.items)
    return "video" if videos and videos == len(dataset.items) else "mixed" if videos else "image"


def check_finite_features(encoded: EncodedDataset, dataset: RetrievalDataset, model_name: str) -> None:
    """Refuse NaN or infinite embeddings, naming the first item or caption that has one."""
    for kind, embeds in (("item", encoded.item_embeds), ("caption", encoded.text_embeds)):
        bad = np.flatnonzero(~np.isfinite(embeds).all(axis=1)) if embeds.size else []
        if len(bad):
            n = int(bad[0])
            what = (
                f"item {dataset.items[n].id!r}"
                if kind == "item"
                else f"caption {n} ({dataset.captions[n].text!r})"
            )
            raise VlretError(
                f"{model_name}: the embedding of {what} is not finite ({len(bad)} {kind}s in all); "
                "the model's weights or inputs hold NaN or infinity"
            )
