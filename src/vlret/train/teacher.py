"""Frozen unimodal teachers for distillation (RVLR): an image tower and a text tower, and their features of
every training pair.

The features of pair ``k`` (the ``k``-th caption of the training split, in the split's order) are row ``k``
of two arrays, ``{split}_image_embed_regu.npy`` ``[pairs, d_I]`` (an image's features repeated for each of
its captions) and ``{split}_text_embed_regu.npy`` ``[pairs, d_T]``: RVLR's released layout. They are the
towers' raw global vectors (no normalisation) of the un-augmented image and caption.

Two sources, one interface (:class:`Teacher`):

- a **cache** folder with the two arrays, read memory-mapped: written by ``vlret features teacher`` (in
  resumable chunks, with ``teacher.json`` recording the towers and fingerprints of the captions and of the
  image files' content, checked when training reads it) or the released files (whose row count is checked);
- **towers** run on the fly: each pair's features are computed the first time a batch needs them and kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlret.data.image_files import load_image
from vlret.data.records import RetrievalDataset
from vlret.errors import ConfigError, DataError
from vlret.models.backbones import build_image_tower, build_text_tower

MANIFEST = "teacher.json"


def feature_files(folder: Path, split: str) -> tuple[Path, Path]:
    return folder / f"{split}_image_embed_regu.npy", folder / f"{split}_text_embed_regu.npy"


def captions_fingerprint(data: RetrievalDataset) -> str:
    """A hash of the split's (item id, caption) pairs in order: rows of teacher features follow it."""
    pairs = [[c.item_id, c.text] for c in data.captions]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:24]


def images_fingerprint(data: RetrievalDataset) -> str:
    """A hash of the content of the files the split's items are read from (an image file, the tar of a
    webdataset member, the array of region features), so features of an image since rewritten, even in
    place under its old name, are not read as its features."""
    from vlret.data._io import file_digest
    from vlret.data.tar_members import tar_member
    from vlret.errors import DataError

    files = []
    for item in data.items:
        path = Path(str(data.media_path(item)).split("#", 1)[0])  # region rows: FILE.npy#ROW
        inside = None if path.is_file() else tar_member(path)
        if inside is None and not path.is_file():  # before any image is encoded
            raise DataError(path, f"item {item.id!r}", "image file not found (--on-error skip leaves it out)")
        files.append(str(inside[0] if inside else path))
    digests = {f: file_digest(f) for f in dict.fromkeys(files)}
    return hashlib.sha256(json.dumps([[f, digests[f]] for f in files]).encode()).hexdigest()[:24]


@dataclass
class TeacherTowers:
    """The two frozen towers, by registry name."""

    image_tower: str = "efficientnet-lite0"
    text_tower: str = "minilm"
    image_options: dict = field(default_factory=dict)
    text_options: dict = field(default_factory=dict)
    batch_size: int = 64

    def build(self) -> None:
        self.image = build_image_tower(self.image_tower, options=self.image_options).eval()
        self.text = build_text_tower(self.text_tower, 64, options=self.text_options).eval()
        self.dims = (int(self.image.width), int(self.text.width))

    @torch.no_grad()
    def image_features(self, data: RetrievalDataset, items: list[int]) -> np.ndarray:
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = [data.items[i] for i in items[start : start + self.batch_size]]
            pixels = np.stack(
                [self.image.transform(load_image(data.media_path(it), f"item {it.id!r}")) for it in chunk]
            )
            out.append(self.image(torch.from_numpy(pixels)).embeds.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dims[0]), np.float32)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.text.tokenize(texts[start : start + self.batch_size])
            out.append(self.text(batch).embeds.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dims[1]), np.float32)

    def pair_features(self, data: RetrievalDataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image, text) features of captions ``rows``; each distinct image is encoded once."""
        item_of_row = data.caption_to_item[rows]
        items, inverse = np.unique(item_of_row, return_inverse=True)
        images = self.image_features(data, items.tolist())[inverse]
        texts = self.text_features([data.captions[int(r)].text for r in rows])
        return images, texts

    def describe(self) -> dict:
        return {
            "image_tower": self.image_tower,
            "text_tower": self.text_tower,
            "image_options": self.image_options,
            "text_options": self.text_options,
        }


class Teacher:
    """Teacher features of training pairs by caption index (see the module docstring)."""

    def __init__(self, image: np.ndarray, text: np.ndarray, source: str, towers: TeacherTowers | None = None):
        self.image, self.text, self.source = image, text, source
        self.towers, self.data = towers, None
        self.done = None if towers is None else np.zeros(len(image), bool)

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.text.shape[1])

    @classmethod
    def from_cache(cls, folder: str | Path, data: RetrievalDataset, split: str) -> Teacher:
        """The arrays in ``folder`` for ``data`` (the training split named ``split``)."""
        folder = Path(folder)
        image_file, text_file = feature_files(folder, split)
        for path in (image_file, text_file):
            if not path.is_file():
                raise ConfigError(
                    f"teacher.cache: {path} not found; write it with vlret features teacher --out {folder}"
                )
        meta = _read_manifest(folder)  # first: arrays of an unfinished write are not to be read
        image, text = _load_rows(image_file), _load_rows(text_file)
        pairs = len(data.captions)
        for path, array in ((image_file, image), (text_file, text)):
            if array.ndim != 2 or len(array) != pairs:
                raise DataError(
                    path, None, f"shape {array.shape}; expected one row per training pair ({pairs} rows)"
                )
        manifest = folder / MANIFEST
        if meta.get("complete") is not True:
            raise DataError(manifest, None, "the features are not complete; run vlret features teacher again")
        if meta.get("captions") != captions_fingerprint(data):
            raise DataError(
                manifest,
                "captions",
                "written for other captions (or another order) than this training split's",
            )
        if "images" in meta and meta["images"] != images_fingerprint(
            data
        ):  # caches written before it was recorded
            raise DataError(
                manifest,
                "images",
                "written for other image content than this training split's (an image file changed since); "
                f"run vlret features teacher again into another --out than {folder}",
            )
        return cls(image, text, str(folder))

    @classmethod
    def on_the_fly(cls, towers: TeacherTowers, data: RetrievalDataset) -> Teacher:
        towers.build()
        pairs = len(data.captions)
        teacher = cls(
            np.zeros((pairs, towers.dims[0]), np.float32),
            np.zeros((pairs, towers.dims[1]), np.float32),
            f"towers {towers.image_tower} + {towers.text_tower}",
            towers,
        )
        teacher.data = data
        return teacher

    def features(self, caption_ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, d_I], [B, d_T])`` float32 teacher features of the pairs ``caption_ids``."""
        rows = caption_ids.cpu().numpy()
        if self.done is not None:
            todo = np.unique(rows[~self.done[rows]])
            if len(todo):
                self.image[todo], self.text[todo] = self.towers.pair_features(self.data, todo)
                self.done[todo] = True
        image = torch.from_numpy(np.asarray(self.image[rows], np.float32))
        text = torch.from_numpy(np.asarray(self.text[rows], np.float32))
        return image.to(device), text.to(device)


def _read_manifest(folder: Path) -> dict:
    """``teacher.json``: required, since only it says which captions the rows belong to (unchecked rows
    would silently pair the wrong features with the captions)."""
    from vlret.data._io import read_json

    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise DataError(
            manifest,
            None,
            "not found: it records which captions the features belong to; write the features with "
            f"vlret features teacher --out {folder}",
        )
    meta = read_json(manifest)
    if not isinstance(meta, dict):
        raise DataError(manifest, None, f"expected a JSON object, got {type(meta).__name__}")
    return meta


def _load_rows(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:  # a truncated or foreign file
        raise DataError(path, None, f"not a readable .npy array ({exc})") from None


def features_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished write of teacher features (its manifest says so)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def write_teacher_features(
    data: RetrievalDataset,
    split: str,
    out: str | Path,
    towers: TeacherTowers,
    chunk: int = 1024,
    progress: bool = True,
) -> dict:
    """Write ``{split}_image_embed_regu.npy`` and ``{split}_text_embed_regu.npy`` for every caption of
    ``data`` into ``out``, ``chunk`` pairs at a time; a killed run resumes after its last finished chunk."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    fingerprint = captions_fingerprint(data)
    towers.build()
    pairs = len(data.captions)
    meta = {
        "split": split,
        "pairs": pairs,
        "captions": fingerprint,
        "images": images_fingerprint(data),
        "towers": towers.describe(),
        "dims": list(towers.dims),
        "rows_done": 0,
        "complete": False,
    }
    if manifest_path.is_file():
        saved = json.loads(manifest_path.read_text())
        same = {k: saved.get(k) for k in ("split", "captions", "images", "towers")} == {
            k: meta[k] for k in ("split", "captions", "images", "towers")
        }
        if not same:
            raise ConfigError(
                f"{out}: holds teacher features of other captions, images or towers ({manifest_path}); "
                "use another --out"
            )
        meta["rows_done"] = int(saved.get("rows_done", 0))
    arrays = []
    for path, width in zip(feature_files(out, split), towers.dims, strict=True):
        if meta["rows_done"] and path.is_file():
            arrays.append(np.load(path, mmap_mode="r+"))
        else:
            arrays.append(np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(pairs, width)))
    starts = range(meta["rows_done"], pairs, chunk)
    for start in tqdm(starts, desc="teacher features", disable=not progress):
        rows = np.arange(start, min(start + chunk, pairs))
        image, text = towers.pair_features(data, rows)
        arrays[0][rows], arrays[1][rows] = image, text
        for array in arrays:
            array.flush()
        meta["rows_done"] = int(rows[-1]) + 1
        _write_json(manifest_path, meta)
    meta["complete"] = True
    _write_json(manifest_path, meta)
    return meta


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
