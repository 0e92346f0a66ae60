"""Batched encoding of a dataset's items and captions, with an on-disk feature cache.

The cache key covers the model (its identity and a hash of its weights), the records (ids, paths, captions)
and the preprocessing, so features are reused exactly when nothing that shapes them changed. Entries are
written to a temporary folder and renamed into place: a killed run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlret.data.formats import dataset_fingerprint
from vlret.data.images import load_image
from vlret.data.records import RetrievalDataset
from vlret.models.base import RetrievalModel


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLRET_CACHE", Path.home() / ".cache" / "vlret")) / "features"


@dataclass
class EncodedDataset:
    """L2-normalised global embeddings of a dataset's items and captions (float32, in dataset order)."""

    item_embeds: np.ndarray  # [n_items, D]
    text_embeds: np.ndarray  # [n_captions, D]
    from_cache: bool = False


def weights_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(model: RetrievalModel, dataset: RetrievalDataset) -> str:
    parts = {
        "model": model.identity(),
        "weights": weights_fingerprint(model),
        "data": dataset_fingerprint(dataset),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.no_grad()
def encode_images(
    model: RetrievalModel, dataset: RetrievalDataset, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Normalised embeddings of every item's image; an unreadable image raises a DataError naming it."""
    model.eval()
    out = []
    device = model.device
    items = dataset.items
    for start in tqdm(
        range(0, len(items), batch_size), desc="encode images", disable=not progress, unit="batch"
    ):
        batch = items[start : start + batch_size]
        pixels = np.stack(
            [model.image_transform(load_image(dataset.media_path(it), f"item {it.id!r}")) for it in batch]
        )
        out.append(_normalise(model.encode_images(torch.from_numpy(pixels).to(device)).embeds).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def encode_texts(
    model: RetrievalModel, texts: list[str], batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """Normalised embeddings of texts."""
    model.eval()
    out = []
    device = model.device
    for start in tqdm(
        range(0, len(texts), batch_size), desc="encode texts", disable=not progress, unit="batch"
    ):
        batch = {k: v.to(device) for k, v in model.tokenize(texts[start : start + batch_size]).items()}
        out.append(_normalise(model.encode_texts(batch).embeds).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def encode_dataset(
    model: RetrievalModel,
    dataset: RetrievalDataset,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> EncodedDataset:
    """Embeddings of all items and captions, read from the cache when an identical job ran before."""
    entry = None
    if use_cache:
        entry = Path(cache_dir or default_cache_dir()) / cache_key(model, dataset)
        if (entry / "meta.json").is_file():
            return EncodedDataset(np.load(entry / "items.npy"), np.load(entry / "texts.npy"), from_cache=True)
    items = encode_images(model, dataset, batch_size, progress)
    texts = encode_texts(model, [c.text for c in dataset.captions], max(batch_size, 256), progress)
    if entry is not None:
        _store(entry, items, texts, {"model": model.identity(), "items": len(items), "captions": len(texts)})
    return EncodedDataset(items, texts)


def _store(entry: Path, items: np.ndarray, texts: np.ndarray, meta: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        np.save(tmp / "items.npy", items)
        np.save(tmp / "texts.npy", texts)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same entry first: fine
