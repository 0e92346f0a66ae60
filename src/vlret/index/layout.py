"""The files of an index version, and how a version is made and published; shared by a full build
(:mod:`vlret.index.build`), an update (:mod:`vlret.index.update`) and the searcher (:mod:`vlret.index.search`).

A version folder holds ``index.json``, the items' columns (``items.*``, :data:`ITEM_FIELDS`),
``embeddings.npy``, the search structure (``faiss.index``), the file records (``files.*``,
:mod:`vlret.index.sources`), for a two-stage index the head's tables (:data:`HEAD_ITEMS`,
:data:`HEAD_CAPTIONS`), and for a built-in model stored with its index the model (:data:`INDEX_MODEL`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.format import open_memmap

import vlret
from vlret.data._io import read_json
from vlret.index.choice import IndexChoice
from vlret.index.ondisk import build_on_disk, train_ivf
from vlret.index.sources import FileKey

if TYPE_CHECKING:  # torch's modules: the searcher reads this module's names without torch
    from vlret.data.records import RetrievalDataset
    from vlret.evaluate.encode import FeatureTable
    from vlret.models.base import RetrievalModel

ITEM_FIELDS = ("id", "path")  # the string columns an index keeps per item

#: the tables of the head's features (``{name}.embeds.npy``, ``.tokens.npy``, ``.mask.npy``) in a two-stage index
HEAD_ITEMS, HEAD_CAPTIONS = "head_items", "head_captions"
#: the folder of a version that holds its model, for a built-in model that is stored with its index
INDEX_MODEL = "model"
#: rows copied at a time when tables are joined (a memory-mapped table is never read whole)
JOIN_ROWS = 65536
#: the reason a chunk records for a file that was listed and gone when it was read (a removal)
VANISHED = "vanished before it was read"
#: rows added per shard of an on-disk index (about 512 MiB of 512-d float32 vectors at a time)
ONDISK_SHARD_ROWS = 256 * 1024


@dataclass
class BuildJob:
    """One build as :func:`build_index` resolved it: what the encoders and the assembler need."""

    out: Path
    work: Path
    root: Path
    paths: list[str]
    ids: list[str]
    dataset: RetrievalDataset | None
    encoders: object  # the build's encoders (vlret.index.build)
    model: RetrievalModel
    model_name: str
    first_stage: str | None
    shortlist: int
    memory_budget_bytes: int | None
    video: dict | None
    settings: dict
    progress: bool
    on_disk: bool

    def report(self, line: str) -> None:
        """A line for the person running the build (on stderr, when progress is shown)."""
        if self.progress:
            print(line, file=sys.stderr, flush=True)


def kept_items(folders: list[Path], n_paths: int) -> tuple[np.ndarray, list[dict]]:
    """The indices of the encoded items, and the skipped ones (files that vanished left out), from the
    chunks' records."""
    skipped = [s for folder in folders for s in read_json(folder / "skipped.json")]
    dropped = {s["index"] for s in skipped}
    kept = np.array([i for i in range(n_paths) if i not in dropped], dtype=np.int64)
    return kept, [s for s in skipped if s["reason"] != VANISHED]


def chunk_keys(folders: list[Path]) -> list[FileKey | None]:
    """The keys of the encoded files, in order, from the chunks."""
    return [None if k is None else FileKey(*k) for folder in folders for k in read_json(folder / "keys.json")]


def join_tables(parts: list[FeatureTable], out: Path, name: str) -> FeatureTable:
    """Concatenate ``parts`` into ``out/{name}.*.npy`` a part at a time (tokens are padded to the longest
    part; a memory-mapped part is read in pieces); returns the result memory-mapped."""
    from vlret.evaluate.encode import read_table

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
        for start in range(0, len(p), JOIN_ROWS):
            stop = min(start + JOIN_ROWS, len(p))
            at = slice(row + start, row + stop)
            embeds[at] = p.embeds[start:stop]
            if tokens is not None:
                width = p.tokens.shape[1]
                tokens[at, :width] = p.tokens[start:stop]
                tokens[at, width:] = 0
                mask[at] = False
                mask[at, :width] = p.mask[start:stop]
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


def index_meta(
    job: BuildJob, n_items: int, dim: int, n_captions: int, choice: IndexChoice, storage: str
) -> dict:
    """``index.json`` of a build or update of ``job``."""
    from vlret.models.registry import untrained_warning

    meta = common_meta(
        job.model_name, job.root, n_items, dim, n_captions, choice, storage, job.memory_budget_bytes
    )
    meta["video"] = job.video
    meta["model_fingerprint"] = job.settings["model_fingerprint"]
    meta["build"] = job.settings
    meta["trained_on"] = n_items  # the collection's size when its search structure was made
    meta["warnings"] = [w for w in (untrained_warning(job.model_name),) if w]
    if store_model(job):
        job.model.save(job.work / INDEX_MODEL)
        meta["model_folder"] = INDEX_MODEL
    if job.encoders.head_model is not None:
        meta["two_stage"] = {
            "head": job.model.head.describe(),
            "first_stage": job.first_stage,
            "shortlist": job.shortlist,
            "token_dtype": job.settings["token_dtype"],
        }
    return meta


def store_model(job: BuildJob) -> bool:
    """Whether the version keeps a saved copy of its model: a built-in model named as such (not a folder)
    that computes what a copy holds, used unwrapped and alone (:attr:`RetrievalModel.stored_with_index`)."""
    model = job.model
    return (
        model.stored_with_index
        and job.video is None
        and job.first_stage is None
        and not Path(job.model_name).exists()
    )


def common_meta(
    model_name: str,
    root: Path,
    n_items: int,
    dim: int,
    n_captions: int,
    choice: IndexChoice,
    storage: str,
    memory_budget_bytes: int | None,
) -> dict:
    """``index.json``'s common fields."""
    return {
        "model": model_name,
        "media_root": str(root),
        "items": n_items,
        "captions": n_captions,
        "dim": dim,
        "choice": choice.as_dict(),
        "storage": storage,
        "memory_budget_bytes": memory_budget_bytes,
        "video": None,
        "skipped": [],
        "warnings": [],
        "vlret_version": vlret.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def publish_version(work: Path, out: Path) -> Path:
    """Move the finished ``work`` folder into place as the new version and point ``out`` at it; its build
    files (chunks, manifest) are removed after, so a build killed before the switch finds them and
    assembles again without encoding."""
    versions = out.with_name(out.name + ".versions")
    versions.mkdir(exist_ok=True)
    version = versions / f"v-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    os.replace(work, version)
    link = out.with_name(f".{out.name}.link")
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(version, out.parent), link)
    previous = out.resolve() if out.is_symlink() else None
    os.replace(link, out)  # atomic: readers see the old version or the new one
    shutil.rmtree(version / "chunks", ignore_errors=True)
    (version / "manifest.json").unlink(missing_ok=True)
    # the version before stays on disk, so that every replica of a server resolves the links any of them
    # gave out from it; older ones go (readers that opened them keep their open files)
    keep = {version.resolve(), previous}
    for old in versions.iterdir():
        if old.is_dir() and old.name.startswith("v-") and old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return out
