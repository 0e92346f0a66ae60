"""Image files (and region-feature rows): loading with errors that name the file and the item, and a check pass before long jobs."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlret.data._policy import ErrorPolicy, OnError
from vlret.data.records import RetrievalDataset
from vlret.data.regions import is_region_path, load_regions
from vlret.data.tar_members import read_member, tar_member
from vlret.data.video import FrameCache, check_video, clip_frames, default_frame_cache, is_video_path
from vlret.errors import DataError

_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)

#: the largest image decoded anywhere (uploads, collections, datasets): a 50-megapixel photo, 150 MB as RGB
MAX_IMAGE_PIXELS = 50_000_000
#: the most elongated image accepted: resizing the short side to a model's input size makes the long side
#: this many times longer (a 200,000 x 1 strip of 0.2 MP would otherwise become gigabytes at 224 px)
MAX_ASPECT_RATIO = 50


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` (as its header declares) is refused before decoding, or None."""
    if width < 1 or height < 1:
        return f"the image declares {width} x {height} pixels"
    if width * height > MAX_IMAGE_PIXELS:
        return f"the image declares {width} x {height} = {width * height} pixels; the limit is {MAX_IMAGE_PIXELS}"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (
            f"the image is {width} x {height} pixels, more elongated than {MAX_ASPECT_RATIO}:1; resized for a "
            "model it would take far more memory than its pixels"
        )
    return None


def load_image(path: str | Path, record: str | None = None) -> Image.Image:
    """Open an image fully decoded, in RGB; a missing, corrupt, oversized or extremely elongated file
    raises :class:`DataError` (checked from the header, before anything is decoded). A path inside a tar
    file (``SHARD.tar/MEMBER``) reads that member."""
    path = Path(path)
    source: Path | io.BytesIO = path
    if not path.is_file():
        inside = tar_member(path)
        if inside is None:
            raise DataError(path, record, "image file not found")
        source = io.BytesIO(read_member(*inside))
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                problem = size_problem(*img.size)
                if problem:
                    raise DataError(path, record, f"refused: {problem}")
                img.load()
                return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DataError(path, record, f"refused: {exc}") from None
    except _READ_ERRORS as exc:
        raise DataError(path, record, f"cannot decode image ({exc})") from None


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
