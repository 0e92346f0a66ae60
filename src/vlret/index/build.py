"""Building an index: encode a collection in resumable chunks, build the search structure, publish atomically.

Layout: ``INDEX`` is a symbolic link to ``INDEX.versions/v-<time>/``, which holds ``index.json`` (model
reference, counts, the index choice), ``items.json``, ``embeddings.npy`` (L2-normalised float32), optionally
``captions.json`` and ``caption_embeddings.npy``, and ``faiss.index``. A build works in ``INDEX.building/``:
each chunk of embeddings is saved as it is finished, so a killed build started again encodes only the
missing chunks. The finished version is published by replacing the link, so a reader sees the old index or
the new one, never a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import vlret
from vlret.data._io import write_json
from vlret.data.images import load_image
from vlret.data.records import RetrievalDataset
from vlret.errors import ConfigError, DataError
from vlret.evaluate.encode import encode_texts
from vlret.index.choice import choose_index
from vlret.models.registry import create_model, is_model_reference

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def images_in(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted relative paths."""
    if not folder.is_dir():
        raise DataError(folder, None, "not a folder")
    found = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise DataError(folder, None, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _encode_chunks(
    model, root: Path, paths: list[str], work: Path, chunk_size: int, batch_size: int, progress: bool
):
    chunks = work / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(paths) + chunk_size - 1) // chunk_size
    import torch

    model.eval()
    for c in tqdm(range(n_chunks), desc="index chunks", disable=not progress, unit="chunk"):
        target = chunks / f"images-{c:05d}.npy"
        if target.is_file():
            continue  # done by an earlier, interrupted build
        part = paths[c * chunk_size : (c + 1) * chunk_size]
        out = []
        with torch.no_grad():
            for b in range(0, len(part), batch_size):
                pixels = np.stack(
                    [model.image_transform(load_image(root / p, p)) for p in part[b : b + batch_size]]
                )
                emb = model.encode_images(torch.from_numpy(pixels).to(model.device)).embeds
                out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        _save_atomic(target, np.concatenate(out))
    return np.concatenate([np.load(chunks / f"images-{c:05d}.npy") for c in range(n_chunks)])


def _faiss_index(embeddings: np.ndarray, choice):
    import faiss

    dim = embeddings.shape[1]
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        sample = embeddings[rng.choice(len(embeddings), size=min(len(embeddings), 256 * 1024), replace=False)]
        index.train(np.ascontiguousarray(sample))
    index.add(np.ascontiguousarray(embeddings))
    return index


def build_index(
    model_name: str,
    out: str | Path,
    images: str | Path | None = None,
    dataset: RetrievalDataset | None = None,
    chunk_size: int = 1024,
    batch_size: int = 64,
    memory_budget_bytes: int | None = None,
    progress: bool = True,
) -> Path:
    """Build (or rebuild) the index at ``out`` from a folder of images or a dataset's items (and captions)."""
    if not is_model_reference(model_name):
        raise ConfigError(
            f"{model_name!r}: an index needs a trained model: a saved vlret model folder or hf:<id or folder>"
        )
    if (images is None) == (dataset is None):
        raise ConfigError("give exactly one of images (a folder) or dataset")
    out = Path(out)
    if out.exists() and not out.is_symlink():
        raise ConfigError(f"{out} exists and is not a vlret index link; choose another path")
    if Path(model_name).is_dir():
        model_name = str(Path(model_name).resolve())  # the index must work from any working directory
    if dataset is not None:
        root, paths = dataset.media_root.resolve(), [it.path for it in dataset.items]
        ids = [it.id for it in dataset.items]
    else:
        root = Path(images).resolve()
        paths = images_in(root)
        ids = list(paths)
    work = out.with_name(out.name + ".building")
    manifest = {
        "model": model_name,
        "root": str(root),
        "chunk_size": chunk_size,
        "items": hashlib.sha256(json.dumps(paths).encode()).hexdigest(),
    }
    manifest_file = work / "manifest.json"
    if work.exists() and (not manifest_file.is_file() or json.loads(manifest_file.read_text()) != manifest):
        shutil.rmtree(work)  # a different build was interrupted here: its chunks do not apply
    work.mkdir(parents=True, exist_ok=True)
    write_json(manifest_file, manifest)
    model = create_model(model_name)
    embeddings = _encode_chunks(model, root, paths, work, chunk_size, batch_size, progress)
    np.save(work / "embeddings.npy", embeddings)
    write_json(work / "items.json", [{"id": i, "path": p} for i, p in zip(ids, paths, strict=True)])
    n_captions = 0
    if dataset is not None and dataset.captions:
        texts = [c.text for c in dataset.captions]
        np.save(work / "caption_embeddings.npy", encode_texts(model, texts, progress=progress))
        write_json(work / "captions.json", [{"text": c.text, "item_id": c.item_id} for c in dataset.captions])
        n_captions = len(texts)
    choice = choose_index(len(embeddings), embeddings.shape[1], memory_budget_bytes)
    import faiss

    faiss.write_index(_faiss_index(embeddings, choice), str(work / "faiss.index"))
    write_json(
        work / "index.json",
        {
            "model": model_name,
            "media_root": str(root),
            "items": len(embeddings),
            "captions": n_captions,
            "dim": int(embeddings.shape[1]),
            "choice": choice.as_dict(),
            "memory_budget_bytes": memory_budget_bytes,
            "vlret_version": vlret.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    shutil.rmtree(work / "chunks")
    manifest_file.unlink()
    return _publish(work, out)


def _publish(work: Path, out: Path) -> Path:
    versions = out.with_name(out.name + ".versions")
    versions.mkdir(exist_ok=True)
    version = versions / f"v-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    os.replace(work, version)
    link = out.with_name(f".{out.name}.link")
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(version, out.parent), link)
    previous = out.resolve() if out.is_symlink() else None
    os.replace(link, out)  # atomic: readers see the old version or the new one
    if previous is not None and previous != version.resolve():
        shutil.rmtree(previous, ignore_errors=True)  # readers that opened it keep their open files
    return out
