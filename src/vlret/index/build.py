"""Building an index: encode a collection in resumable chunks, build the search structure, publish atomically.

Layout: ``INDEX`` is a symbolic link to ``INDEX.versions/v-<time>/``, which holds ``index.json`` (model
reference, counts, the index choice and where its vectors live), the items' ids and paths as memory-mapped
string columns (``items.*``, :mod:`vlret.index.columns`), ``embeddings.npy`` (L2-normalised float32),
optionally the captions (``captions.*`` columns) and ``caption_embeddings.npy``, and ``faiss.index`` (with
``faiss.ivfdata`` when its lists are on disk, :mod:`vlret.index.ondisk`). A model whose head is not a dot product
adds its head's features (``head_items.*.npy``, ``head_captions.*.npy``: embeddings, tokens, masks) and a
``two_stage`` entry in ``index.json``: searches take a shortlist by the embeddings, then re-score it with the
head. A build works in ``INDEX.building/``: each chunk is saved as it is finished, so a killed build started
again encodes only the missing chunks. The finished version is published by replacing the link, so a reader sees the old index or
the new one, never a partial one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm

import vlret
from vlret.data._io import read_json, write_json
from vlret.data._policy import ErrorPolicy, OnError
from vlret.data.image_files import load_image
from vlret.data.records import RetrievalDataset
from vlret.data.video import VIDEO_SUFFIXES, clip_frames, default_frame_cache, is_video_path, stack_clip
from vlret.errors import ConfigError, DataError
from vlret.evaluate.encode import (
    TOKEN_DTYPES,
    FeatureTable,
    concat_tables,
    encode_texts,
    read_table,
    table_from_features,
    write_table,
)
from vlret.index.choice import IndexChoice, choose_index
from vlret.index.chunks import ChunkClaims, chunk_name, encode_claimed
from vlret.index.columns import write_columns
from vlret.index.ondisk import build_on_disk, train_ivf
from vlret.models.base import RetrievalModel
from vlret.models.registry import canonical_model_name, create_model, is_model_reference, untrained_warning

#: candidates a two-stage index re-scores with the model's head, per query, unless the build says otherwise
DEFAULT_SHORTLIST = 100
#: the tables of the head's features (``{name}.embeds.npy``, ``.tokens.npy``, ``.mask.npy``) in a two-stage index
HEAD_ITEMS, HEAD_CAPTIONS = "head_items", "head_captions"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
#: rows added per shard of an on-disk index (about 512 MiB of 512-d float32 vectors at a time)
ONDISK_SHARD_ROWS = 256 * 1024


def images_in(folder: Path, suffixes: set[str] | tuple[str, ...] = tuple(IMAGE_SUFFIXES)) -> list[str]:
    """Media files under ``folder`` (recursively) with one of ``suffixes`` (images by default), as sorted
    relative paths."""
    if not folder.is_dir():
        raise DataError(folder, None, "not a folder")
    found = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in suffixes
    )
    if not found:
        raise DataError(folder, None, f"no media files ({', '.join(sorted(suffixes))})")
    return found


Media = Image.Image | list[Image.Image]  # an image, or a clip's sampled frames


class _Encoders:
    """The models a build runs: one for the shortlist embeddings and, when the model's head is not a dot
    product, the model itself for the features its head re-scores with (one call when they are the same)."""

    def __init__(self, shortlist: RetrievalModel, head_model: RetrievalModel | None, token_dtype: str):
        self.shortlist = shortlist.eval()
        self.head_model = None if head_model is None else head_model.eval()
        self.token_dtype = np.dtype(token_dtype)

    @property
    def keep_tokens(self) -> bool:
        return self.head_model is not None and self.head_model.head.uses_tokens

    def load(self, path: Path, record: str) -> Media:
        """An image, or for a video model the sampled frames of a clip (an image is a still clip)."""
        sampling = getattr(self.shortlist, "sampling", None)
        if sampling is None:
            return load_image(path, record)
        return clip_frames(path, sampling, record, default_frame_cache())

    def _encode(self, model: RetrievalModel, media: list[Media], keep_tokens: bool) -> FeatureTable:
        def pixels(one: Media) -> np.ndarray:
            if isinstance(one, Image.Image):
                return model.image_transform(one)
            return stack_clip(
                [model.image_transform(frame) for frame in one], getattr(model, "sampling", None)
            )

        batch = torch.from_numpy(np.stack([pixels(one) for one in media])).to(model.device)
        return table_from_features(model.encode_images(batch), keep_tokens, self.token_dtype)

    @torch.no_grad()
    def images(self, images: list[Media]) -> dict[str, FeatureTable]:
        """``{"shortlist": ..., "head": ...}`` tables of a batch of images or clips (``head`` only with a head
        model)."""
        if self.head_model is self.shortlist:
            both = self._encode(self.shortlist, images, self.keep_tokens)
            return {"shortlist": FeatureTable(both.embeds), "head": both}
        out = {"shortlist": self._encode(self.shortlist, images, False)}
        if self.head_model is not None:
            out["head"] = self._encode(self.head_model, images, self.keep_tokens)
        return out


def _encode_chunks(
    encoders: _Encoders,
    root: Path,
    paths: list[str],
    work: Path,
    chunk_size: int,
    batch_size: int,
    progress: bool,
    on_error: OnError = "raise",
    shard: tuple[int, int] | None = None,
) -> list[Path]:
    """Encode the chunks that are missing (of shard ``i/n``: chunks ``i, i + n, ...``) and return every chunk
    folder. Each chunk is claimed first (:mod:`vlret.index.chunks`), so other builders on the same output
    encode other chunks; without a shard, chunks they hold are waited for, so that all are done on return."""
    chunks = work / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(paths) + chunk_size - 1) // chunk_size
    folders = [chunks / chunk_name(c) for c in range(n_chunks)]
    mine = range(n_chunks) if shard is None else range(shard[0], n_chunks, shard[1])
    bar = tqdm(total=len(mine), desc="index chunks", disable=not progress, unit="chunk")

    def encode(c: int, tmp: Path) -> None:
        first = c * chunk_size
        tables, skipped = _encode_chunk(
            encoders, root, paths[first : first + chunk_size], batch_size, on_error
        )
        for side, table in tables.items():
            write_table(tmp, side, table)
        write_json(tmp / "skipped.json", [{**s, "index": first + s["index"]} for s in skipped])
        bar.update()

    encode_claimed(ChunkClaims(chunks), mine, encode, wait_for_others=shard is None)
    bar.close()
    return folders


def _kept_items(folders: list[Path], root: Path, n_paths: int) -> tuple[np.ndarray, list[dict]]:
    """The indices of the readable items, and the skipped ones, from the chunks' records."""
    skipped = [s for folder in folders for s in read_json(folder / "skipped.json")]
    dropped = {s["index"] for s in skipped}
    kept = np.array([i for i in range(n_paths) if i not in dropped], dtype=np.int64)
    if len(kept) == 0:
        raise DataError(root, None, f"none of the {n_paths} images could be read")
    return kept, skipped


def _encode_chunk(
    encoders: _Encoders, root: Path, part: list[str], batch_size: int, on_error: OnError
) -> tuple[dict[str, FeatureTable], list[dict]]:
    policy = ErrorPolicy(on_error)
    images, kept, skipped = [], [], []
    for n, rel in enumerate(part):
        try:
            images.append(encoders.load(root / rel, rel))
            kept.append(rel)
        except DataError as exc:
            policy.bad(exc.file, exc.record or rel, exc.problem)  # raises unless skipping
            skipped.append({"index": n, "file": rel, "reason": exc.problem})
    batches = [encoders.images(images[b : b + batch_size]) for b in range(0, len(images), batch_size)]
    sides = batches[0].keys() if batches else ("shortlist",)
    tables = {side: concat_tables([batch[side] for batch in batches]) for side in sides}
    for table in tables.values():
        bad = np.flatnonzero(~np.isfinite(table.embeds).all(axis=1))
        if len(bad):
            raise DataError(
                root / kept[int(bad[0])], None, "the model gives a non-finite embedding for this image"
            )
    return tables, skipped


def _join_chunks(folders: list[Path], side: str, out: Path, name: str) -> FeatureTable:
    """Concatenate the chunks' ``side`` tables into ``out/{name}.*.npy`` without holding them in memory
    at once (tokens are padded to the longest chunk); returns the result memory-mapped."""
    parts = [read_table(folder, side) for folder in folders]
    parts = [p for p in parts if len(p)]
    n = sum(len(p) for p in parts)
    embeds = open_memmap(out / f"{name}.embeds.npy", "w+", np.float32, (n, parts[0].embeds.shape[1]))
    tokens = mask = None
    if parts[0].tokens is not None:
        length = max(p.tokens.shape[1] for p in parts)
        shape = (n, length, parts[0].tokens.shape[2])
        tokens = open_memmap(out / f"{name}.tokens.npy", "w+", parts[0].tokens.dtype, shape)
        mask = open_memmap(out / f"{name}.mask.npy", "w+", np.bool_, (n, length))
    row = 0
    for p in parts:
        embeds[row : row + len(p)] = p.embeds
        if tokens is not None:
            tokens[row : row + len(p), : p.tokens.shape[1]] = p.tokens
            tokens[row : row + len(p), p.tokens.shape[1] :] = 0
            mask[row : row + len(p)] = False
            mask[row : row + len(p), : p.mask.shape[1]] = p.mask
        row += len(p)
    for array in (embeds, tokens, mask):
        if array is not None:
            array.flush()
    return read_table(out, name)


def write_faiss_index(embeddings: np.ndarray, choice: IndexChoice, folder: Path, on_disk: bool) -> str:
    """Write ``folder/faiss.index`` for the chosen index; returns where its vectors live (``memory`` or
    ``on_disk``). On disk, an inverted-file index is added shard by shard and merged into
    :data:`~vlret.index.ondisk.IVF_DATA`; an exact one is not written at all: it is searched from the
    memory-mapped ``embeddings.npy`` (a FAISS flat index would hold a second copy in memory)."""
    if on_disk:
        if choice.kind != "exact":
            build_on_disk(choice.factory, embeddings, folder, ONDISK_SHARD_ROWS)
        return "on_disk"
    import faiss

    index = train_ivf(choice.factory, embeddings)
    index.add(np.ascontiguousarray(embeddings))
    faiss.write_index(index, str(folder / "faiss.index"))
    return "memory"


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
    first_stage: str | None = None,
    shortlist: int = DEFAULT_SHORTLIST,
    token_dtype: str = "float32",
    videos: str | Path | None = None,
    video: dict | None = None,
    shard: tuple[int, int] | None = None,
    assemble: bool = True,
    on_disk: bool = False,
) -> Path | None:
    """Build (or rebuild) the index at ``out`` from a folder of images, a folder of videos or a dataset's
    items (and captions); returns the published version.

    Any number of builders may run on one ``out`` at once (on one machine or several sharing the folder):
    each encodes chunks the others have not claimed (:mod:`vlret.index.chunks`), and one of them assembles
    the index when all are done. ``shard=(i, n)`` encodes only chunks ``i, i + n, ...`` (a slurm array
    task); it returns None when other shards' chunks are still missing, and the last shard to finish, or a
    build without ``shard``, assembles the index without encoding anything twice. ``assemble=False`` only
    encodes (and returns None): a driver that runs the shards assembles them itself
    (:mod:`vlret.index.ray_engine`).

    Videos (``videos``, or a dataset whose items are clips) are encoded by a video model: the model itself
    when it is one, else the model wrapped with ``video`` (:class:`~vlret.models.video.VideoConfig`'s
    settings; meanP over 8 frames by default), which the index records so that searches wrap it alike.

    A model whose similarity head is a dot product is searched by its embeddings alone. Any other head is
    searched in two stages: a shortlist of ``shortlist`` candidates by the cosine of global embeddings (the
    model's own, or those of the ``first_stage`` model), then the exact head score of each candidate from
    the features stored here (tokens as ``token_dtype``).

    ``on_error="skip"`` leaves out images that cannot be read (and their captions) and lists them in
    ``index.json``; by default the first one stops the build, naming the file.

    ``on_disk=True`` keeps the vectors out of the searcher's memory: an inverted-file index is built shard
    by shard and its lists merged into one file that searches read per query (:mod:`vlret.index.ondisk`);
    an exact index is searched from the memory-mapped embeddings.
    """
    for name in (model_name, first_stage):
        if name is not None and not is_model_reference(name):
            raise ConfigError(
                f"{name!r}: an index needs a trained model: a saved vlret model folder or hf:<id or folder>"
            )
    if sum(x is not None for x in (images, videos, dataset)) != 1:
        raise ConfigError("give exactly one of images (a folder), videos (a folder) or dataset")
    if isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1:
        raise ConfigError(f"shortlist must be a whole number of candidates >= 1, not {shortlist!r}")
    if token_dtype not in TOKEN_DTYPES:
        raise ConfigError(f"token dtype must be one of {', '.join(TOKEN_DTYPES)}, not {token_dtype!r}")
    out = Path(out)
    if out.exists() and not out.is_symlink():
        raise ConfigError(f"{out} exists and is not a vlret index link; choose another path")
    model_name, first_stage = (
        None if n is None else canonical_model_name(n) for n in (model_name, first_stage)
    )
    if dataset is not None:
        root, paths = dataset.media_root.resolve(), [it.path for it in dataset.items]
        ids = [it.id for it in dataset.items]
    elif videos is not None:
        root = Path(videos).resolve()
        paths = images_in(root, VIDEO_SUFFIXES)
        ids = list(paths)
    else:
        root = Path(images).resolve()
        paths = images_in(root)
        ids = list(paths)
    model = create_model(model_name)
    if model.input_kind == "frames":
        video = None  # a saved video model carries its own settings
    elif video is not None or any(is_video_path(p) for p in paths):
        video = dict(video or {})
        model = create_model(model_name, video=video)
    if model.input_kind not in ("pixels", "frames"):
        raise ConfigError(
            f"{model_name}: it reads {model.input_kind}, and an index is built from image or video files"
        )
    two_stage = not model.head.is_dot_product
    if first_stage is not None and not two_stage:
        raise ConfigError(
            f"{model_name}: its head is a dot product, so its own embeddings are exact; a first-stage "
            "model is only for heads that re-score a shortlist"
        )
    encoders = _Encoders(
        model if first_stage is None else create_model(first_stage, video=video),
        model if two_stage else None,
        token_dtype,
    )
    work = out.with_name(out.name + ".building")
    manifest = {
        "model": model_name,
        # the weights, not the name: a folder replaced between a killed build and its rerun is another model
        "model_fingerprint": model.fingerprint(),
        "first_stage": first_stage,
        "first_stage_fingerprint": None if first_stage is None else encoders.shortlist.fingerprint(),
        "root": str(root),
        "chunk_size": chunk_size,
        "on_error": on_error,
        "token_dtype": token_dtype if encoders.keep_tokens else None,
        "video": video,
        "layout": 3,  # one folder per chunk
        "items": hashlib.sha256(json.dumps(paths).encode()).hexdigest(),
    }
    plan = _Plan(
        out,
        work,
        root,
        paths,
        ids,
        dataset,
        encoders,
        model,
        model_name,
        first_stage,
        shortlist,
        memory_budget_bytes,
        video,
        manifest,
        progress,
        on_disk,
    )
    out.parent.mkdir(parents=True, exist_ok=True)  # --out in a folder not made yet: the locks live beside it
    lock = out.with_name(f".{out.name}.build.lock")
    with _locked(lock, exclusive=False):  # builders encode side by side; the assembler waits for them
        _start_or_join(work, manifest, out.with_name(f".{out.name}.start.lock"))
        folders = _encode_chunks(
            encoders, root, paths, work, chunk_size, batch_size, progress, on_error, shard
        )
    if not assemble or not all(folder.is_dir() for folder in folders):  # others are still at their chunks
        return None
    with _locked(lock, exclusive=True):
        if not (work / "manifest.json").is_file():  # another builder published it while we waited
            return out.resolve()
        return _assemble(plan, folders)


@dataclass
class _Plan:
    """One build as :func:`build_index` resolved it: what the assembler needs besides the chunks."""

    out: Path
    work: Path
    root: Path
    paths: list[str]
    ids: list[str]
    dataset: RetrievalDataset | None
    encoders: _Encoders
    model: RetrievalModel
    model_name: str
    first_stage: str | None
    shortlist: int
    memory_budget_bytes: int | None
    video: dict | None
    manifest: dict
    progress: bool
    on_disk: bool


def _start_or_join(work: Path, manifest: dict, lock: Path) -> None:
    """Make the work folder, or join the build in it: the same build (a rerun after a kill, or another
    builder) keeps its chunks; a different build's leftovers are cleared.

    One builder at a time, under ``lock``: a builder that found the folder of another still starting (no
    manifest yet) took it for a leftover and removed it under its feet (seen with two Ray workers)."""
    manifest_file = work / "manifest.json"
    with _locked(lock, exclusive=True):
        if work.exists():
            before = json.loads(manifest_file.read_text()) if manifest_file.is_file() else None
            if before != manifest:
                chunks = work / "chunks"
                encoded = sum(1 for _ in chunks.iterdir()) if chunks.is_dir() else 0
                if before is not None and encoded:
                    raise ConfigError(_other_build_message(work, before, manifest, encoded))
                shutil.rmtree(work)  # a build that stopped before encoding anything: nothing to keep
        work.mkdir(parents=True, exist_ok=True)
        write_json(manifest_file, manifest)


def _other_build_message(work: Path, before: dict, now: dict, encoded: int) -> str:
    """Why a build cannot join the one in ``work``: each setting that differs, the models by name and
    fingerprint."""
    differ = []
    for key in sorted(set(before) | set(now)):
        if key.endswith("fingerprint") or before.get(key) == now.get(key):
            continue
        differ.append(f"{key}: {before.get(key)!r} there, {now.get(key)!r} here")
    for key, name in (("model_fingerprint", "model"), ("first_stage_fingerprint", "first_stage")):
        if before.get(key) != now.get(key):
            differ.append(
                f"{name} weights: {before.get(name)} ({before.get(key)}) there, {now.get(name)} ({now.get(key)}) "
                "here"
            )
    return (
        f"{work} holds {encoded} encoded chunk(s) of another build of this index ({'; '.join(differ)}). "
        "It may still be running: wait for it, or build into another --out; if it was stopped, remove "
        f"{work} to discard its chunks"
    )


@contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """A blocking ``flock`` on ``path``: shared while builders encode, exclusive to assemble."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _assemble(plan: _Plan, folders: list[Path]) -> Path:
    """Join the chunks, encode the captions, build the FAISS index and publish the version."""
    work, paths, ids, dataset = plan.work, plan.paths, plan.ids, plan.dataset
    two_stage = plan.encoders.head_model is not None
    kept, skipped = _kept_items(folders, plan.root, len(paths))
    embeddings = _join_chunks(folders, "shortlist", work, "shortlist").embeds
    os.replace(work / "shortlist.embeds.npy", work / "embeddings.npy")
    if two_stage:
        _join_chunks(folders, "head", work, HEAD_ITEMS)
    write_columns(
        work, "items", {"id": [ids[i] for i in kept], "path": [paths[i] for i in kept]}, sort_by="id"
    )
    n_captions = 0
    if dataset is not None and dataset.captions:
        n_captions = _index_captions(plan.encoders, dataset, {ids[i] for i in kept}, work, plan.progress)
    choice = choose_index(len(embeddings), embeddings.shape[1], plan.memory_budget_bytes)
    storage = write_faiss_index(embeddings, choice, work, plan.on_disk)
    meta = _index_meta(
        plan.model_name, plan.root, embeddings, n_captions, choice, storage, plan.memory_budget_bytes
    )
    meta["video"] = plan.video
    meta["model_fingerprint"] = plan.manifest["model_fingerprint"]
    meta["skipped"] = [{"file": s["file"], "reason": s["reason"]} for s in skipped]
    meta["warnings"] = [w for w in (untrained_warning(plan.model_name),) if w]
    if two_stage:
        meta["two_stage"] = {
            "head": plan.model.head.describe(),
            "first_stage": plan.first_stage,
            "shortlist": plan.shortlist,
            "token_dtype": plan.manifest["token_dtype"],
        }
    write_json(work / "index.json", meta)
    shutil.rmtree(work / "chunks")
    (work / "manifest.json").unlink()
    return _publish(work, plan.out)


def _index_meta(
    model_name: str,
    root: Path,
    embeddings: np.ndarray,
    n_captions: int,
    choice: IndexChoice,
    storage: str,
    memory_budget_bytes: int | None,
) -> dict:
    """``index.json``'s common fields."""
    return {
        "model": model_name,
        "media_root": str(root),
        "items": len(embeddings),
        "captions": n_captions,
        "dim": int(embeddings.shape[1]),
        "choice": choice.as_dict(),
        "storage": storage,
        "memory_budget_bytes": memory_budget_bytes,
        "video": None,
        "skipped": [],
        "warnings": [],
        "vlret_version": vlret.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def index_embeddings(
    model_name: str,
    out: str | Path,
    embeddings: np.ndarray,
    ids: list[str],
    paths: list[str],
    media_root: str | Path,
    on_disk: bool = False,
    memory_budget_bytes: int | None = None,
    source: str | None = None,
) -> Path:
    """Publish an index over embeddings computed elsewhere (clip-retrieval's, say) for items ``ids`` at
    ``paths`` (relative to ``media_root``); queries are encoded by ``model_name``, which must be the
    model that made the embeddings. Rows are L2-normalised here (those of unit length already are kept as
    they are); ``source`` is recorded."""
    out = Path(out)
    if out.exists() and not out.is_symlink():
        raise ConfigError(f"{out} exists and is not a vlret index link; choose another path")
    if not (len(embeddings) == len(ids) == len(paths)) or len(ids) == 0:
        raise ConfigError(
            f"{len(embeddings)} embeddings for {len(ids)} ids and {len(paths)} paths: give one row per item"
        )
    model_name = canonical_model_name(model_name)
    work = out.with_name(out.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vectors = open_memmap(work / "embeddings.npy", "w+", np.float32, tuple(embeddings.shape))
    for start in range(0, len(embeddings), 65536):  # a part at a time: the input may be memory-mapped
        part = np.asarray(embeddings[start : start + 65536], dtype=np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        bad = np.flatnonzero(~np.isfinite(part).all(axis=1) | (norms[:, 0] == 0))
        if len(bad):
            raise DataError(
                source or "embeddings", f"row {start + int(bad[0])}", "a zero or non-finite embedding"
            )
        # rows already of unit length are kept bit for bit (an exported index comes back unchanged)
        vectors[start : start + len(part)] = part / np.where(np.abs(norms - 1) <= 1e-6, 1, norms)
    vectors.flush()
    write_columns(work, "items", {"id": list(ids), "path": list(paths)}, sort_by="id")
    choice = choose_index(len(vectors), vectors.shape[1], memory_budget_bytes)
    storage = write_faiss_index(vectors, choice, work, on_disk)
    meta = _index_meta(
        model_name, Path(media_root).resolve(), vectors, 0, choice, storage, memory_budget_bytes
    )
    meta["imported_from"] = source
    # paths left absolute lie outside the media root: indexed and searchable, never served
    meta["outside_media_root"] = sum(1 for p in paths if os.path.isabs(p))
    write_json(work / "index.json", meta)
    return _publish(work, out)


def _index_captions(
    encoders: _Encoders, dataset: RetrievalDataset, kept_ids: set[str], work: Path, progress: bool
) -> int:
    """Encode the captions of the kept items: shortlist embeddings, and head features for a two-stage index."""
    captions = [c for c in dataset.captions if c.item_id in kept_ids]
    texts = [c.text for c in captions]
    np.save(
        work / "caption_embeddings.npy", encode_texts(encoders.shortlist, texts, progress=progress).embeds
    )
    if encoders.head_model is not None:
        table = encode_texts(
            encoders.head_model,
            texts,
            progress=progress,
            keep_tokens=encoders.keep_tokens,
            token_dtype=str(encoders.token_dtype),
        )
        write_table(work, HEAD_CAPTIONS, table)
    write_columns(work, "captions", {"text": texts, "item_id": [c.item_id for c in captions]})
    return len(texts)


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
    # the version before stays on disk, so that every replica of a server resolves the links any of them
    # gave out from it; older ones go (readers that opened them keep their open files)
    keep = {version.resolve(), previous}
    for old in versions.iterdir():
        if old.is_dir() and old.name.startswith("v-") and old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return out
