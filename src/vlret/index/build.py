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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm

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
from vlret.index.choice import choose_index
from vlret.index.chunks import ChunkClaims, chunk_name, encode_claimed
from vlret.index.columns import write_columns
from vlret.index.layout import (
    HEAD_CAPTIONS,
    HEAD_ITEMS,
    VANISHED,
    BuildJob,
    chunk_keys,
    common_meta,
    index_meta,
    join_tables,
    kept_items,
    publish_version,
    write_faiss_index,
)
from vlret.index.sources import (
    FileKey,
    Records,
    checked_after_reading,
    describe,
    file_stat,
    key_before_reading,
    mass_removal_problem,
    plan_change,
)
from vlret.index.update import assemble_update, retrain_due, update_imported
from vlret.models.base import RetrievalModel
from vlret.models.registry import (
    canonical_model_name,
    create_model,
    did_you_mean,
    is_model_reference,
)

#: candidates a two-stage index re-scores with the model's head, per query, unless the build says otherwise
DEFAULT_SHORTLIST = 100
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def images_in(folder: Path, suffixes: set[str] | tuple[str, ...] = tuple(IMAGE_SUFFIXES)) -> list[str]:
    """Media files under ``folder`` (recursively) with one of ``suffixes`` (images by default), as sorted
    relative paths."""
    if not folder.is_dir():
        raise DataError(folder, None, "not a folder")
    wanted = {s.lower() for s in suffixes}
    found = []
    for top, _, files in os.walk(folder):  # strings, not Path objects: 20,000 files cost 1.4 s with rglob
        prefix = os.path.relpath(top, folder).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name in files:
            dot = name.rfind(".")
            if dot > 0 and name[dot:].lower() in wanted:
                found.append(prefix + name)
    found.sort()
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
        tables, skipped, keys = _encode_chunk(
            encoders, root, paths[first : first + chunk_size], batch_size, on_error
        )
        for side, table in tables.items():
            write_table(tmp, side, table)
        write_json(tmp / "skipped.json", [{**s, "index": first + s["index"]} for s in skipped])
        write_json(tmp / "keys.json", [None if k is None else [k.size, k.mtime_ns, k.digest] for k in keys])
        bar.update()

    encode_claimed(ChunkClaims(chunks), mine, encode, wait_for_others=shard is None)
    bar.close()
    return folders


def _encode_chunk(
    encoders: _Encoders, root: Path, part: list[str], batch_size: int, on_error: OnError
) -> tuple[dict[str, FeatureTable], list[dict], list[FileKey | None]]:
    """Encode the readable files of ``part``: the tables, the skipped files (``index`` in ``part``) and
    each file's key as it was read (None: the file vanished since it was listed, a removal, not an error)."""
    policy = ErrorPolicy(on_error)
    images, kept, skipped, keys = [], [], [], []
    for n, rel in enumerate(part):
        key = key_before_reading(root / rel)
        if key is None and file_stat(root / rel) is None:
            skipped.append({"index": n, "file": rel, "reason": VANISHED})
            keys.append(None)
            continue
        try:
            images.append(encoders.load(root / rel, rel))
            kept.append(rel)
        except DataError as exc:
            policy.bad(exc.file, exc.record or rel, exc.problem)  # raises unless skipping
            skipped.append({"index": n, "file": rel, "reason": exc.problem})
        keys.append(checked_after_reading(root / rel, key))
    batches = [encoders.images(images[b : b + batch_size]) for b in range(0, len(images), batch_size)]
    sides = batches[0].keys() if batches else ("shortlist",)
    tables = {side: concat_tables([batch[side] for batch in batches]) for side in sides}
    for table in tables.values():
        bad = np.flatnonzero(~np.isfinite(table.embeds).all(axis=1))
        if len(bad):
            raise DataError(
                root / kept[int(bad[0])], None, "the model gives a non-finite embedding for this image"
            )
    return tables, skipped, keys


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
    rebuild: bool = False,
    retrain: bool = False,
    verify: bool = False,
    allow_mass_removal: bool = False,
    settle_seconds: float = 0.0,
) -> Path | None:
    """Build the index at ``out`` from a folder of images, a folder of videos or a dataset's items (and
    captions), or update it; returns the published version.

    Over an existing index of the same model and settings, the build is an update
    (:mod:`vlret.index.update`): only files that are new or changed are encoded (``verify`` reads every
    file's digest, catching an edit that kept size and mtime), rows of unchanged files are kept byte for
    byte, files that are gone are dropped, and the new version is published as a build's is. An update
    that would remove more than half the items is refused unless ``allow_mass_removal``; ``retrain`` makes
    the search structure again from the stored embeddings; ``rebuild`` encodes everything.
    ``settle_seconds`` leaves files modified that recently for a later update (copies still being
    written; :mod:`vlret.index.watch` uses it).

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
                f"{name!r}: an index needs a trained model: conse (real photos, no training), a saved vlret "
                f"model folder, hf:<hub id or folder> or openclip:<arch>/<tag>.{did_you_mean(name)}"
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
    settings = {
        "source": "dataset" if dataset is not None else "videos" if videos is not None else "images",
        "model": model_name,
        # the weights, not the name: a folder replaced between a killed build and its rerun is another model
        "model_fingerprint": model.fingerprint(),
        "first_stage": first_stage,
        "first_stage_fingerprint": None if first_stage is None else encoders.shortlist.fingerprint(),
        "root": str(root),
        "token_dtype": token_dtype if encoders.keep_tokens else None,
        "video": video,
    }
    job = BuildJob(
        out, out.with_name(out.name + ".building"), root, paths, ids, dataset, encoders, model, model_name,
        first_stage, shortlist, memory_budget_bytes, video, settings, progress, on_disk,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)  # --out in a folder not made yet
    locks = BuildLocks(out)
    while True:
        previous = None if rebuild else _current_version(out)
        change = None
        if previous is not None:
            change = _plan_update(job, out.resolve(), verify, settle_seconds, allow_mass_removal, retrain)
            if change is None or (change.is_empty and not retrain):
                job.report(f"index {out}: up to date, nothing to encode")
                return out if assemble else None
        to_encode = paths if change is None else [change.paths[n] for n in change.to_encode]
        manifest = {
            **settings,
            "chunk_size": chunk_size,
            "on_error": on_error,
            "layout": 4,  # one folder per chunk, with the read files' keys
            "base": previous,
            "update_of": previous,
            "items": hashlib.sha256(json.dumps(to_encode).encode()).hexdigest(),
        }
        fd = _start_or_join(job.work, manifest, locks, None if rebuild else out)
        if fd is not None:
            break
        job.report(f"another build or update of {out} is at work: waiting for it, then planning again")
        locks.wait_for_others()
    try:
        folders = _encode_chunks(
            encoders, root, to_encode, job.work, chunk_size, batch_size, progress, on_error, shard
        )
    finally:
        os.close(fd)
    if not assemble or not all(folder.is_dir() for folder in folders):  # others are still at their chunks
        return None
    with locks.assembling():
        if not (job.work / "manifest.json").is_file():  # another builder published it while we waited
            return out.resolve()
        if change is None:
            return _assemble(job, folders)
        return assemble_update(job, folders, out.resolve(), change, retrain)


def _plan_update(
    job: BuildJob, previous: Path, verify: bool, settle: float, allow_mass_removal: bool, retrain: bool
):
    """What an update of the index at ``previous`` encodes, keeps and removes (:mod:`vlret.index.sources`);
    None when an item list with repeated paths needs a full build. Settings that differ are refused."""
    meta = read_json(previous / "index.json")
    problem = update_problem(meta, job.settings, job.on_disk, job.memory_budget_bytes, retrain)
    if problem:
        raise ConfigError(f"{job.out}: {problem}")
    records = Records.read(previous)
    if records is None:
        raise ConfigError(
            f"{job.out} was built before vlret kept a record of its files, so it cannot be updated: "
            "run the same command once with --rebuild"
        )
    if len(set(job.paths)) != len(job.paths):
        raise ConfigError(
            f"{job.out}: the collection lists a file more than once, so it is rebuilt, not updated: "
            "run the same command with --rebuild"
        )
    change = plan_change(job.root, job.paths, records, verify, settle)
    problem = mass_removal_problem(change, int(meta["items"]), allow_mass_removal)
    if problem:
        raise ConfigError(f"{job.out}: {problem}")
    if change.is_empty and not _same_items(job, previous, change):
        change.counts["relabelled"] = 1  # ids or captions changed around unchanged files: publish them
    if not change.is_empty:
        job.report(f"update of {job.out}: {describe(change)}")
    return change


def _same_items(job: BuildJob, previous: Path, change) -> bool:
    """Whether the published version lists the same items (ids, paths) and captions as this build."""
    from vlret.index.columns import StringTable
    from vlret.index.search import ITEM_FIELDS

    items = StringTable.open(previous, "items", ITEM_FIELDS)
    by_path = dict(zip(job.paths, job.ids, strict=True))
    if sorted((it["id"], it["path"]) for it in items) != sorted(
        (by_path[p], p) for p, row in zip(change.paths, change.kept, strict=True) if row >= 0
    ):
        return False
    if job.dataset is None:
        return True
    meta = read_json(previous / "index.json")
    if meta.get("captions", 0) == 0:
        return not job.dataset.captions
    old = StringTable.open(previous, "captions", ("text", "item_id"), None)
    return sorted((c["text"], c["item_id"]) for c in old) == sorted(
        (c.text, c.item_id) for c in job.dataset.captions
    )


#: settings an update must share with the index: anything else changes every embedding
REBUILD_SETTINGS = ("source", "model", "model_fingerprint", "first_stage", "first_stage_fingerprint", "root",
                    "token_dtype", "video")  # fmt: skip


def update_problem(
    meta: dict, settings: dict, on_disk: bool, memory_budget_bytes: int | None, retrain: bool = False
) -> str | None:
    """Why an index (``index.json``'s ``meta``) cannot be updated with these settings; None when it can
    (another storage or memory budget only with ``retrain``, which makes the search structure again)."""
    before = meta.get("build")
    if before is None:
        return (
            "it was built before vlret recorded its build settings, so it cannot be updated: run the same "
            "command once with --rebuild"
        )
    differ = [
        f"{key}: {before.get(key)!r} in the index, {settings.get(key)!r} now"
        for key in REBUILD_SETTINGS
        if before.get(key) != settings.get(key)
    ]
    if differ:
        return (
            f"an update must use the index's own model and settings, and these differ ({'; '.join(differ)}); "
            "a full build is needed: run with --rebuild"
        )
    return _storage_problem(meta, on_disk, memory_budget_bytes, retrain)


def _storage_problem(meta: dict, on_disk: bool, memory_budget_bytes: int | None, retrain: bool) -> str | None:
    """Why the index's search structure cannot take this build's storage and budget as it is (None: it
    can, or ``retrain`` makes it again)."""
    storage = "on_disk" if on_disk else "memory"
    if retrain or (meta.get("storage"), meta.get("memory_budget_bytes")) == (storage, memory_budget_bytes):
        return None
    return (
        f"the index is stored {meta.get('storage')} with memory budget {meta.get('memory_budget_bytes')}, and "
        f"this build asks {storage} with {memory_budget_bytes}: its search structure must be made again; "
        "run with --retrain (the embeddings are kept) or --rebuild"
    )


def _start_or_join(work: Path, manifest: dict, locks: BuildLocks, out: Path | None = None) -> int | None:
    """Make the work folder, or join the build in it, and return the held (shared) build lock; None when
    this builder must wait and plan again: another build or update of a different plan is at work, or
    (``out`` given) the index moved on from the version this update was planned against.

    The same build (a rerun after a kill, or another builder) keeps its chunks; a different full build's
    leftovers are refused when it encoded anything (it may be running, or the user may want it); a stopped
    update's leftovers are cleared (an update is planned again from the folder, and is small).

    One builder at a time, under the start lock: a builder that found the folder of another still starting
    (no manifest yet) took it for a leftover and removed it under its feet (seen with two Ray workers)."""
    manifest_file = work / "manifest.json"
    with locks.starting():
        if work.exists():
            before = json.loads(manifest_file.read_text()) if manifest_file.is_file() else None
            if before != manifest:
                updating = (
                    manifest.get("update_of") is not None or (before or {}).get("update_of") is not None
                )
                if updating and locks.others_at_work():
                    return None
                chunks = work / "chunks"
                encoded = sum(1 for _ in chunks.iterdir()) if chunks.is_dir() else 0
                if before is not None and encoded and before.get("update_of") is None:
                    raise ConfigError(_other_build_message(work, before, manifest, encoded))
                shutil.rmtree(work)  # nothing encoded, or a stopped update: nothing to keep
        fd = locks.hold_encoding()
        if out is not None and _current_version(out) != manifest.get("base"):
            os.close(fd)  # another builder published since this one planned
            return None
        work.mkdir(parents=True, exist_ok=True)
        write_json(manifest_file, manifest)
        return fd


def _current_version(out: Path) -> str | None:
    """The name of the version folder ``out`` links to (None: no index yet)."""
    return out.resolve().name if out.is_symlink() and (out / "index.json").is_file() else None


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


class BuildLocks:
    """The locks of builds on one index, kept in ``INDEX.versions/`` (nothing is left beside the index):
    ``.start.lock`` lets one builder at a time start or join, ``.build.lock`` is held shared by every
    builder while it encodes and exclusively by the one that assembles."""

    def __init__(self, out: Path):
        folder = out.with_name(out.name + ".versions")
        folder.mkdir(parents=True, exist_ok=True)
        self.start_file, self.build_file = folder / ".start.lock", folder / ".build.lock"

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def held(self, path: Path, exclusive: bool) -> Iterator[None]:
        """A blocking ``flock`` on ``path`` for the body."""
        fd = self._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def starting(self):
        return self.held(self.start_file, exclusive=True)

    def assembling(self):
        return self.held(self.build_file, exclusive=True)

    def hold_encoding(self) -> int:
        """Take the build lock shared and return its descriptor (closing it releases the lock)."""
        fd = self._open(self.build_file)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def others_at_work(self) -> bool:
        """Whether another builder holds the build lock now."""
        fd = self._open(self.build_file)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def wait_for_others(self) -> None:
        """Block until no other builder holds the build lock."""
        with self.held(self.build_file, exclusive=True):
            pass


def _assemble(job: BuildJob, folders: list[Path]) -> Path:
    """Join the chunks, encode the captions, build the FAISS index and publish the version."""
    work, paths, ids, dataset = job.work, job.paths, job.ids, job.dataset
    kept, skipped = kept_items(folders, len(paths))
    if len(kept) == 0:
        raise DataError(job.root, None, f"none of the {len(paths)} files could be read")
    embeddings = join_tables([read_table(f, "shortlist") for f in folders], work, "shortlist").embeds
    os.replace(work / "shortlist.embeds.npy", work / "embeddings.npy")
    if job.encoders.head_model is not None:
        join_tables([read_table(f, "head") for f in folders], work, HEAD_ITEMS)
    write_columns(
        work, "items", {"id": [ids[i] for i in kept], "path": [paths[i] for i in kept]}, sort_by="id"
    )
    keys = chunk_keys(folders)
    rows = np.full(len(paths), -1, dtype=np.int64)
    rows[kept] = np.arange(len(kept))
    listed = [i for i, k in enumerate(keys) if k is not None]
    Records([paths[i] for i in listed], [keys[i] for i in listed], rows[listed]).write(work)
    n_captions = 0
    if dataset is not None and dataset.captions:
        n_captions = _index_captions(job.encoders, dataset, {ids[i] for i in kept}, work, job.progress)
    choice = choose_index(len(embeddings), embeddings.shape[1], job.memory_budget_bytes)
    storage = write_faiss_index(embeddings, choice, work, job.on_disk)
    meta = index_meta(job, len(embeddings), int(embeddings.shape[1]), n_captions, choice, storage)
    meta["skipped"] = [{"file": s["file"], "reason": s["reason"]} for s in skipped]
    write_json(work / "index.json", meta)
    return publish_version(work, job.out)


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
    rebuild: bool = False,
    retrain: bool = False,
    allow_mass_removal: bool = False,
) -> Path:
    """Publish an index over embeddings computed elsewhere (clip-retrieval's, say) for items ``ids`` at
    ``paths`` (relative to ``media_root``); queries are encoded by ``model_name``, which must be the
    model that made the embeddings. Rows are L2-normalised here (those of unit length already are kept as
    they are); ``source`` is recorded.

    Over an index imported before with the same model, it is an update (:func:`vlret.index.update.
    update_imported`): items with the same id and vector keep their rows, and an IVF index is not trained
    again. ``rebuild`` replaces the index instead; ``retrain`` makes its search structure again."""
    out = Path(out)
    if out.exists() and not out.is_symlink():
        raise ConfigError(f"{out} exists and is not a vlret index link; choose another path")
    if not (len(embeddings) == len(ids) == len(paths)) or len(ids) == 0:
        raise ConfigError(
            f"{len(embeddings)} embeddings for {len(ids)} ids and {len(paths)} paths: give one row per item"
        )
    model_name = canonical_model_name(model_name)
    root = Path(media_root).resolve()
    previous = None if rebuild else _current_version(out)
    if previous is not None:
        problem = _import_problem(
            read_json(out.resolve() / "index.json"), model_name, root, embeddings.shape[1],
            on_disk, memory_budget_bytes, retrain,
        )  # fmt: skip
        if problem:
            raise ConfigError(f"{out}: {problem}")
    work = out.with_name(out.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    incoming = work / ("incoming.npy" if previous is not None else "embeddings.npy")
    vectors = open_memmap(incoming, "w+", np.float32, tuple(embeddings.shape))
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
    del vectors
    n, dim = embeddings.shape
    if previous is None:
        vectors = np.load(incoming, mmap_mode="r")
        write_columns(work, "items", {"id": list(ids), "path": list(paths)}, sort_by="id")
        choice = choose_index(n, dim, memory_budget_bytes)
        storage = write_faiss_index(vectors, choice, work, on_disk)
        meta = common_meta(model_name, root, n, dim, 0, choice, storage, memory_budget_bytes)
        meta["trained_on"] = n
    else:
        args = (ids, paths, work, on_disk, memory_budget_bytes, retrain, allow_mass_removal)
        result = update_imported(out.resolve(), incoming, *args)
        if result is None:
            shutil.rmtree(work)
            return out  # up to date
        fields, _ = result
        choice, storage = fields.pop("choice"), fields.pop("storage")
        meta = common_meta(model_name, root, n, dim, 0, choice, storage, memory_budget_bytes)
        meta.update({k: v for k, v in fields.items() if v is not None})
        meta["retrain_due"] = retrain_due(meta["choice"], n, dim, meta["trained_on"], memory_budget_bytes)
    meta["imported_from"] = source
    # paths left absolute lie outside the media root: indexed and searchable, never served
    meta["outside_media_root"] = sum(1 for p in paths if os.path.isabs(p))
    write_json(work / "index.json", meta)
    return publish_version(work, out)


def _import_problem(
    meta: dict,
    model_name: str,
    root: Path,
    dim: int,
    on_disk: bool,
    memory_budget_bytes: int | None,
    retrain: bool,
) -> str | None:
    """Why an import cannot update the index whose ``index.json`` is ``meta`` (None: it can)."""
    if meta.get("imported_from") is None:
        return "it was built from files, not imported from embeddings: replace it with --rebuild"
    differ = [
        f"{name}: {before!r} in the index, {now!r} now"
        for name, before, now in (
            ("model", meta.get("model"), model_name),
            ("media root", meta.get("media_root"), str(root)),
            ("dimension", meta.get("dim"), dim),
        )
        if before != now
    ]
    if differ:
        return f"an update must keep the index's model, media root and dimension ({'; '.join(differ)}): run with --rebuild"
    return _storage_problem(meta, on_disk, memory_budget_bytes, retrain)


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
