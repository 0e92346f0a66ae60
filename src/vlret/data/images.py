"""The media of a dataset's items (images, clips, region-feature rows): a check pass that opens every file
before a long job, and the model inputs of a batch of items. One image file is read by
:mod:`vlret.data.image_files`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlret.data._policy import ErrorPolicy, OnError
from vlret.data.image_files import load_image
from vlret.data.records import RetrievalDataset
from vlret.data.regions import is_region_path, load_regions
from vlret.data.video import FrameCache, check_video, clip_frames, default_frame_cache, is_video_path
from vlret.errors import DataError


def check_media(dataset: RetrievalDataset, on_error: OnError = "raise") -> RetrievalDataset:
    """Open every item's file once; under ``skip`` return the dataset without the bad items (and list them).

    Decoding is cheap next to encoding, and failing here means a long encoding job never dies half-way.
    """
    policy = ErrorPolicy(on_error)
    bad: set[str] = set()
    for item in dataset.items:
        try:
            path = dataset.media_path(item)
            if is_region_path(path):
                load_regions([path], f"item {item.id!r}")
            elif is_video_path(path):
                check_video(path, f"item {item.id!r}")
            else:
                load_image(path, f"item {item.id!r}")
        except DataError as exc:
            policy.bad(exc.file, exc.record or item.id, exc.problem)
            bad.add(item.id)
    if not bad:
        return dataset
    kept = dataset.drop_items(bad)
    kept.skipped.extend(policy.skipped)
    return kept


def _clip_pixels(model, path: Path, record: str, cache: FrameCache | None) -> np.ndarray:
    """A video model's input for one item: its sampled frames through ``image_transform``, ``[F, 3, H, W]``."""
    return np.stack([model.image_transform(f) for f in clip_frames(path, model.sampling, record, cache)])


def visual_inputs(model, dataset: RetrievalDataset, indices) -> np.ndarray:
    """What ``model`` encodes for items ``indices`` of ``dataset``: pixels ``[n, 3, H, W]`` made by its
    ``image_transform``, region features ``[n, R, D]`` when its ``input_kind`` is ``"regions"``, or clips
    ``[n, F, 3, H, W]`` (decoded through the frame cache) when it is ``"frames"``."""
    items = [dataset.items[int(i)] for i in indices]
    paths = [dataset.media_path(it) for it in items]
    if getattr(model, "input_kind", "pixels") == "frames":
        cache = default_frame_cache()
        return np.stack(
            [_clip_pixels(model, p, f"item {it.id!r}", cache) for p, it in zip(paths, items, strict=True)]
        )
    videos = [is_video_path(p) for p in paths]
    if any(videos):
        raise DataError(
            paths[videos.index(True)],
            None,
            f"a video, but {model.name} encodes images; give the model a video section "
            "(model.video, or --video-frames) to pool its frames",
        )
    regions = [is_region_path(p) for p in paths]
    if getattr(model, "input_kind", "pixels") == "regions":
        if not all(regions):
            bad = paths[regions.index(False)]
            raise DataError(
                bad, None, f"{model.name} reads region features (precomp data); this is an image file"
            )
        return load_regions(paths)
    if any(regions):
        bad = paths[regions.index(True)]
        raise DataError(
            bad,
            None,
            f"precomputed region features, but {model.name} reads pixels; use a model with a region tower "
            "(composed with image_tower: regions)",
        )
    return np.stack(
        [model.image_transform(load_image(p, f"item {it.id!r}")) for p, it in zip(paths, items, strict=True)]
    )
