"""Writing precomp region features from images: the offline analogue of bottom-up-attention features.

Each image gets boxes: the whole image first, then either an ``n x n`` grid of cells (``grid``) or one box
per object of a synthetic scene (``scene``: the cell the generator drew the object in, from its
``scenes.json``). Each box is cropped, resized to ``input_size`` and encoded by a pretrained CNN
(EfficientNet-Lite0's pooled 1,280-d feature). Every image gets the same number of regions: boxes are
repeated in order to fill the count (so every row is a real region; set heads such as max are unaffected)
or cut to it.

Output, in the precomp layout (:mod:`vlret.data.precomp`): ``{split}_ims.npy`` (images x regions x 1280,
float32), ``{split}_caps.txt`` (the first 5 captions of each image), ``{split}_ids.txt``, and beside them
``{split}_boxes.npy`` (the boxes, pixels ``x0 y0 x1 y1``) and ``regions.json`` (the settings). Work goes in
``OUT/.building``, one file per chunk of images, so a killed run started again encodes only the missing
chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from vlret.data._io import read_json, write_json
from vlret.data.formats import dataset_fingerprint
from vlret.data.image_files import load_image
from vlret.data.records import RetrievalDataset
from vlret.data.synth import SCENE_GRID, read_scenes
from vlret.data.transforms import ImageTransform
from vlret.errors import ConfigError, DataError

BOX_KINDS = ("grid", "scene")
BACKBONES = ("efficientnet-lite0",)
CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class RegionSettings:
    boxes: str = "grid"
    grid: int = 3
    regions: int | None = None  # None: 1 + grid^2 (grid), 1 + the most objects in a scene (scene)
    backbone: str = "efficientnet-lite0"
    input_size: int = 224
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.boxes not in BOX_KINDS:
            raise ConfigError(f"boxes must be one of {BOX_KINDS}, not {self.boxes!r}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, not {self.backbone!r}")
        for name, low in (("grid", 1), ("input_size", 32), ("chunk_size", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, not {getattr(self, name)}")
        if self.regions is not None and self.regions < 1:
            raise ConfigError(f"regions must be at least 1, not {self.regions}")


Box = tuple[int, int, int, int]


def grid_boxes(width: int, height: int, n: int) -> list[Box]:
    """The whole image, then ``n x n`` cells row by row (edges rounded so the cells tile the image)."""
    xs = [round(width * i / n) for i in range(n + 1)]
    ys = [round(height * i / n) for i in range(n + 1)]
    cells = [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(n) for c in range(n)]
    return [(0, 0, width, height), *cells]


def scene_boxes(width: int, height: int, scene: dict) -> list[Box]:
    """The whole image, then the cell of each object of a synthetic scene, in the scene's order."""
    cells = grid_boxes(width, height, SCENE_GRID)[1:]
    return [
        (0, 0, width, height),
        *(cells[int(o["row"]) * SCENE_GRID + int(o["col"])] for o in scene["objects"]),
    ]


def fill(boxes: list[Box], count: int) -> list[int]:
    """Which of ``boxes`` fills each of ``count`` slots: in order, repeated from the start, or cut."""
    return [n % len(boxes) for n in range(count)]


class CropEncoder:
    """A pretrained CNN's pooled feature of each crop."""

    def __init__(self, settings: RegionSettings, batch_size: int = 64):
        from vlret.models.backbones import build_image_tower

        self.tower = build_image_tower(settings.backbone).eval()
        base = self.tower.transform
        self.transform = ImageTransform(
            settings.input_size, settings.input_size, base.mean, base.std, base.resample, base.resize_mode
        )
        self.width = self.tower.width
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, crops: list) -> np.ndarray:
        out = []
        for start in range(0, len(crops), self.batch_size):
            pixels = torch.from_numpy(
                np.stack([self.transform(c) for c in crops[start : start + self.batch_size]])
            )
            out.append(self.tower(pixels).embeds.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.width), np.float32)


def _count(settings: RegionSettings, scenes: dict[str, dict] | None) -> int:
    if settings.regions is not None:
        return settings.regions
    if settings.boxes == "grid":
        return 1 + settings.grid**2
    return 1 + max(len(s["objects"]) for s in scenes.values())


def _boxes_of(
    item, image, settings: RegionSettings, scenes: dict[str, dict] | None, scenes_file
) -> list[Box]:
    if settings.boxes == "grid":
        if settings.grid > min(image.width, image.height):
            raise DataError(
                item.path,
                f"item {item.id!r}",
                f"a grid of {settings.grid} x {settings.grid} cuts this {image.width} x {image.height} image "
                "into cells under a pixel; choose a smaller grid",
            )
        return grid_boxes(image.width, image.height, settings.grid)
    scene = scenes.get(item.path)
    if scene is None:
        raise DataError(scenes_file, item.path, "no scene for this image (boxes: scene needs one per image)")
    return scene_boxes(image.width, image.height, scene)


def _encode_chunk(
    dataset, items, settings, count, scenes, scenes_file, encoder
) -> tuple[np.ndarray, np.ndarray]:
    crops, slots, boxes_out = [], [], []
    for item in items:
        image = load_image(dataset.media_path(item), f"item {item.id!r}")
        boxes = _boxes_of(item, image, settings, scenes, scenes_file)
        first = len(crops)
        crops.extend(image.crop(b) for b in boxes)  # each distinct box encoded once
        picks = fill(boxes, count)
        slots.append([first + p for p in picks])
        boxes_out.append([boxes[p] for p in picks])
    features = encoder(crops)
    return features[np.asarray(slots)], np.asarray(boxes_out, dtype=np.int32)


def _captions(split: RetrievalDataset) -> list[str]:
    lines = []
    for n, caps in enumerate(split.item_to_captions):
        if len(caps) < CAPTIONS_PER_IMAGE:
            raise DataError(
                split.source,
                f"item {split.items[n].id!r}",
                f"{len(caps)} captions; precomp needs {CAPTIONS_PER_IMAGE} per image",
            )
        lines.extend(split.captions[c].text for c in caps[:CAPTIONS_PER_IMAGE])
    return lines


def write_region_features(
    dataset: RetrievalDataset,
    out: str | Path,
    settings: RegionSettings = RegionSettings(),
    scenes_file: str | Path | None = None,
    splits: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Write the precomp folder ``out`` for ``dataset`` (every split, or ``splits``); returns the settings
    written to ``regions.json``. ``scenes_file``: the synthetic generator's ``scenes.json`` (``boxes: scene``).
    A folder finished with the same settings, data and scenes is reused as it is."""
    out = Path(out)
    scenes = None
    if settings.boxes == "scene":
        if scenes_file is None:
            raise ConfigError(
                "boxes: scene needs the scene file (--scenes, e.g. the synthetic benchmark's scenes.json)"
            )
        scenes = read_scenes(Path(scenes_file))
    count = _count(settings, scenes)
    names = splits or dataset.splits
    encoder = None
    work = out / ".building"
    manifest = {
        **asdict(settings),
        "regions": count,
        "data": dataset_fingerprint(dataset),
        "splits": names,
        "scenes": None if scenes_file is None else hashlib.sha256(Path(scenes_file).read_bytes()).hexdigest(),
    }
    finished = out / "regions.json"
    if finished.is_file() and not work.exists():
        written = read_json(finished)
        if {k: written.get(k) for k in manifest} == manifest:
            return written  # this folder already holds these features
    if work.exists() and (
        not (work / "manifest.json").is_file() or read_json(work / "manifest.json") != manifest
    ):
        shutil.rmtree(work)  # another run's chunks: they do not apply
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "manifest.json", manifest)
    for name in names:
        try:
            split = dataset.split(name)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        lines = _captions(split)
        n_chunks = (len(split.items) + settings.chunk_size - 1) // settings.chunk_size
        for c in tqdm(range(n_chunks), desc=f"regions {name}", disable=not progress, unit="chunk"):
            done = work / f"{name}-{c:05d}.npz"
            if done.is_file():
                continue
            encoder = encoder or CropEncoder(settings)
            items = split.items[c * settings.chunk_size : (c + 1) * settings.chunk_size]
            features, boxes = _encode_chunk(dataset, items, settings, count, scenes, scenes_file, encoder)
            tmp = work / f".{name}-{c:05d}.tmp.npz"
            np.savez(tmp, features=features, boxes=boxes)
            os.replace(tmp, done)
        _join(work, name, n_chunks, len(split.items), out)
        (out / f"{name}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / f"{name}_ids.txt").write_text("\n".join(it.id for it in split.items) + "\n", encoding="utf-8")
    result = {**manifest, "source": dataset.source}
    (out / "regions.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work)
    return result


def _join(work: Path, name: str, n_chunks: int, n_items: int, out: Path) -> None:
    """The chunks of one split as ``{name}_ims.npy`` and ``{name}_boxes.npy``, written without holding them all."""
    first = np.load(work / f"{name}-00000.npz")
    regions, width = first["features"].shape[1:]
    tmp_ims, tmp_boxes = out / f".{name}_ims.tmp.npy", out / f".{name}_boxes.tmp.npy"
    ims = open_memmap(tmp_ims, "w+", np.float32, (n_items, regions, width))
    boxes = open_memmap(tmp_boxes, "w+", np.int32, (n_items, regions, 4))
    row = 0
    for c in range(n_chunks):
        chunk = np.load(work / f"{name}-{c:05d}.npz")
        n = len(chunk["features"])
        ims[row : row + n], boxes[row : row + n] = chunk["features"], chunk["boxes"]
        row += n
    ims.flush()
    boxes.flush()
    del ims, boxes
    os.replace(tmp_ims, out / f"{name}_ims.npy")
    os.replace(tmp_boxes, out / f"{name}_boxes.npy")
