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
from vlret.data._io import read_json, write_json
from vlret.data._policy import ErrorPolicy, OnError
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
    model,
    root: Path,
    paths: list[str],
    work: Path,
    chunk_size: int,
    batch_size: int,
    progress: bool,
    on_error: OnError = "raise",
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Embeddings of the readable images, the indices (into ``paths``) they belong to, and the skipped ones.

    Each chunk leaves ``images-NNNNN.json`` (its skipped images) and then ``images-NNNNN.npy``; the .npy
    marks the chunk as done, so a build started again encodes only the chunks that are missing.
    """
    chunks = work / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(paths) + chunk_size - 1) // chunk_size
    model.eval()
    for c in tqdm(range(n_chunks), desc="index chunks", disable=not progress, unit="chunk"):
        target = chunks / f"images-{c:05d}.npy"
        if not target.is_file():  # else: done by an earlier, interrupted build
            first = c * chunk_size
            embeddings, skipped = _encode_chunk(
                model, root, paths[first : first + chunk_size], batch_size, on_error
            )
            write_json(chunks / f"images-{c:05d}.json", [{**s, "index": first + s["index"]} for s in skipped])
            _save_atomic(target, embeddings)
    parts, skipped = [], []
    for c in range(n_chunks):
        parts.append(np.load(chunks / f"images-{c:05d}.npy"))
        skipped.extend(read_json(chunks / f"images-{c:05d}.json"))
    dropped = {s["index"] for s in skipped}
    kept = np.array([i for i in range(len(paths)) if i not in dropped], dtype=np.int64)
    if len(kept) == 0:
        raise DataError(root, None, f"none of the {len(paths)} images could be read")
    return np.concatenate([p for p in parts if p.size]), kept, skipped


def _encode_chunk(model, root: Path, part: list[str], batch_size: int, on_error: OnError):
    import torch

    policy = ErrorPolicy(on_error)
    images, skipped = [], []
    for n, rel in enumerate(part):
        try:
            images.append(model.image_transform(load_image(root / rel, rel)))
        except DataError as exc:
            policy.bad(exc.file, exc.record or rel, exc.problem)  # raises unless skipping
            skipped.append({"index": n, "file": rel, "reason": exc.problem})
    out = []
    with torch.no_grad():
        for b in range(0, len(images), batch_size):
            pixels = torch.from_numpy(np.stack(images[b : b + batch_size])).to(model.device)
            emb = torch.nn.functional.normalize(model.encode_images(pixels).embeds.float(), dim=-1)
            out.append(emb.cpu().numpy())
    embeddings = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        kept = [rel for n, rel in enumerate(part) if n not in {s["index"] for s in skipped}]
        raise DataError(
            root / kept[int(bad[0])], None, "the model gives a non-finite embedding for this image"
        )
    return embeddings, skipped


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
    on_error: OnError = "raise",
) -> Path:
    """Build (or rebuild) the index at ``out`` from a folder of images or a dataset's items (and captions).

    ``on_error="skip"`` leaves out images that cannot be read (and their captions) and lists them in
    ``index.json``; by default the first one stops the build, naming the file.
    """
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
        "on_error": on_error,
        "layout": 2,  # chunks with a list of skipped images
        "items": hashlib.sha256(json.dumps(paths).encode()).hexdigest(),
    }
    manifest_file = work / "manifest.json"
    if work.exists() and (not manifest_file.is_file() or json.loads(manifest_file.read_text()) != manifest):
        shutil.rmtree(work)  # a different build was interrupted here: its chunks do not apply
    work.mkdir(parents=True, exist_ok=True)
    write_json(manifest_file, manifest)
    model = create_model(model_name)
    if not model.head.is_dot_product:
        # Searching by the global embeddings alone would silently rank by another score than the model's.
        raise ConfigError(
            f"{model_name}: its {model.head.name!r} head is not a dot product; indexes search by the global "
            "embedding's cosine, and two-stage search (shortlist, then the head) is not built yet"
        )
    embeddings, kept, skipped = _encode_chunks(
        model, root, paths, work, chunk_size, batch_size, progress, on_error
    )
    np.save(work / "embeddings.npy", embeddings)
    write_json(work / "items.json", [{"id": ids[i], "path": paths[i]} for i in kept])
    n_captions = 0
    if dataset is not None and dataset.captions:
        kept_ids = {ids[i] for i in kept}
        captions = [c for c in dataset.captions if c.item_id in kept_ids]
        texts = [c.text for c in captions]
        np.save(work / "caption_embeddings.npy", encode_texts(model, texts, progress=progress).embeds)
        write_json(work / "captions.json", [{"text": c.text, "item_id": c.item_id} for c in captions])
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
            "skipped": [{"file": s["file"], "reason": s["reason"]} for s in skipped],
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
