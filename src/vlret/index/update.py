"""Assembling an update: the published version's rows carried over, the changed files' rows added.

:func:`vlret.index.build.build_index` plans an update (:mod:`vlret.index.sources`) and encodes only the
files that are new or changed, in the resumable chunks a build uses. This module makes the new version
from the previous one and those chunks:

- rows: the rows that unchanged (or moved) files keep, in their old order, copied byte for byte, then the
  new rows; the same for a two-stage index's head features and, for a dataset, the captions (a caption
  whose text the index holds keeps its row);
- search structure: an exact index is made again from the rows (no training); an inverted-file index in
  memory drops the removed rows' vectors and adds the new ones under new labels (``remove_ids``,
  ``add_with_ids``: nothing is trained again), its labels kept in ``faiss_labels.npy``; an inverted-file
  index on disk adds every row again to its trained, emptied quantizer, shard by shard, and merges the
  lists on disk. ``retrain`` chooses and trains the structure afresh from the rows.

A retrain is due when the collection has grown or shrunk by more than :data:`RETRAIN_FACTOR` since the
structure was trained (its lists were cut for another size), or when a fresh build would choose another
kind of index; the version records why (``retrain_due``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from vlret.data._io import read_json, write_json
from vlret.errors import ConfigError, DataError
from vlret.evaluate.encode import FeatureTable, encode_texts, read_table
from vlret.index.choice import FAISS_LABELS, IndexChoice, choose_index
from vlret.index.columns import StringTable, write_columns
from vlret.index.layout import (
    HEAD_CAPTIONS,
    HEAD_ITEMS,
    ITEM_FIELDS,
    ONDISK_SHARD_ROWS,
    BuildJob,
    chunk_keys,
    index_meta,
    join_tables,
    kept_items,
    publish_version,
    write_faiss_index,
)
from vlret.index.sources import MASS_REMOVAL_SHARE, Change, FileKey, Records

#: growth (or shrinkage) since training past which a retrain is due
RETRAIN_FACTOR = 2.0


class _Taken:
    """Rows ``rows`` of an array (memory-mapped, say), read only when sliced."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows
        self.shape = (len(rows), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, where: slice) -> np.ndarray:
        return np.asarray(self.array[self.rows[where]])


def _taken(table: FeatureTable, rows: np.ndarray) -> FeatureTable:
    def take(x):
        return None if x is None else _Taken(x, rows)

    return FeatureTable(take(table.embeds), take(table.tokens), take(table.mask))


def _chunk_tables(folders: list[Path], side: str) -> list[FeatureTable]:
    """The chunks' ``side`` tables (a chunk whose files were all skipped holds none)."""
    return [read_table(f, side) for f in folders if (f / f"{side}.embeds.npy").is_file()]


def assemble_update(
    job: BuildJob, folders: list[Path], previous: Path, change: Change, retrain: bool
) -> Path:
    """Make and publish the new version: ``previous``'s kept rows and the chunks' new ones."""
    work = job.work
    old_meta = read_json(previous / "index.json")
    encoded = change.to_encode  # positions in change.paths, in the chunks' order
    encoded_kept, new_skipped = kept_items(folders, len(encoded))
    carried = sorted((int(change.kept[n]), n) for n in range(len(change.paths)) if change.kept[n] >= 0)
    old_rows = np.array([row for row, _ in carried], dtype=np.int64)
    added = [encoded[i] for i in encoded_kept]
    order = [n for _, n in carried] + added  # listing positions, in the new rows' order
    if not order:
        raise DataError(job.root, None, "the update leaves no readable file in the index")
    new_row = np.full(len(change.paths), -1, dtype=np.int64)
    new_row[order] = np.arange(len(order))

    old_embeds = np.load(previous / "embeddings.npy", mmap_mode="r")
    parts = [FeatureTable(_Taken(old_embeds, old_rows)), *_chunk_tables(folders, "shortlist")]
    embeddings = join_tables(parts, work, "shortlist").embeds
    os.replace(work / "shortlist.embeds.npy", work / "embeddings.npy")
    embeddings = np.load(work / "embeddings.npy", mmap_mode="r")
    if job.encoders.head_model is not None:
        head = [_taken(read_table(previous, HEAD_ITEMS), old_rows), *_chunk_tables(folders, "head")]
        join_tables(head, work, HEAD_ITEMS)
    by_path = dict(zip(job.paths, job.ids, strict=True))
    paths = [change.paths[n] for n in order]
    write_columns(work, "items", {"id": [by_path[p] for p in paths], "path": paths}, sort_by="id")
    _write_records(work, change, new_row, chunk_keys(folders))

    n_captions = 0
    if job.dataset is not None and job.dataset.captions:
        n_captions = _update_captions(job, previous, old_meta, {by_path[p] for p in paths})
    choice, storage, trained_on = _update_search(
        previous, old_meta, embeddings, old_rows, work, job.on_disk, job.memory_budget_bytes, retrain
    )
    meta = index_meta(job, len(embeddings), int(embeddings.shape[1]), n_captions, choice, storage)
    meta["created"] = old_meta.get("created", meta["created"])
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta["trained_on"] = trained_on
    meta["update"] = {**change.counts, "encoded": len(added), "deferred": len(change.deferred)}
    known = {s["file"]: s["reason"] for s in old_meta.get("skipped", [])}
    still = [change.paths[n] for n in range(len(change.paths)) if change.kept[n] == -2]
    meta["skipped"] = [{"file": p, "reason": known.get(p, "unreadable")} for p in still] + [
        {"file": s["file"], "reason": s["reason"]} for s in new_skipped
    ]
    meta["retrain_due"] = retrain_due(
        meta["choice"], len(embeddings), int(embeddings.shape[1]), trained_on, job.memory_budget_bytes
    )
    write_json(work / "index.json", meta)
    return publish_version(work, job.out)


def _write_records(work: Path, change: Change, new_row: np.ndarray, encoded_keys: list) -> None:
    """The new version's records: carried keys for kept and known-skipped files, the keys read now for
    encoded ones (a file that vanished before it was read has none)."""
    keys: list[FileKey | None] = list(change.keys)
    for i, n in enumerate(change.to_encode):
        keys[n] = encoded_keys[i]
    listed = [n for n, key in enumerate(keys) if key is not None]
    Records([change.paths[n] for n in listed], [keys[n] for n in listed], new_row[listed]).write(work)


class _Mixed:
    """Rows drawn from two arrays, ``old`` where ``from_old`` else ``new``, at ``rows``; read only when
    sliced (token widths are padded to the wider of the two)."""

    def __init__(self, old, new, from_old: np.ndarray, rows: np.ndarray):
        self.old, self.new, self.from_old, self.rows = old, new, from_old, rows
        some = old if old is not None else new
        widths = [a.shape[1] for a in (old, new) if a is not None and a.ndim > 1]
        self.shape = (len(rows), *((max(widths),) if widths else ()), *some.shape[2:])
        self.dtype = some.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, where: slice) -> np.ndarray:
        rows, from_old = self.rows[where], self.from_old[where]
        out = np.zeros((len(rows), *self.shape[1:]), dtype=self.dtype)
        for source, pick in ((self.old, from_old), (self.new, ~from_old)):
            if pick.any():
                part = np.asarray(source[rows[pick]])
                out[pick, : part.shape[1]] = part
        return out


def _mixed_table(old: FeatureTable | None, new: FeatureTable | None, from_old, rows) -> FeatureTable:
    def field(name: str):
        a, b = (None if t is None else getattr(t, name) for t in (old, new))
        return None if a is None and b is None else _Mixed(a, b, from_old, rows)

    return FeatureTable(field("embeds"), field("tokens"), field("mask"))


def _update_captions(job: BuildJob, previous: Path, old_meta: dict, kept_ids: set[str]) -> int:
    """The captions of the kept items: a text the index holds keeps its embedding, others are encoded."""
    captions = [c for c in job.dataset.captions if c.item_id in kept_ids]
    texts = [c.text for c in captions]
    old_row: dict[str, int] = {}
    if old_meta.get("captions"):
        old = StringTable.open(previous, "captions", ("text", "item_id"), None)
        for n in range(len(old)):
            old_row.setdefault(old.columns["text"][n], n)
    fresh = sorted({t for t in texts if t not in old_row})
    fresh_row = {t: i for i, t in enumerate(fresh)}
    from_old = np.array([t in old_row for t in texts], dtype=bool)
    rows = np.array([old_row[t] if t in old_row else fresh_row[t] for t in texts], dtype=np.int64)
    encoders = job.encoders
    old_embeds = (
        FeatureTable(np.load(previous / "caption_embeddings.npy", mmap_mode="r")) if old_row else None
    )
    new_embeds = encode_texts(encoders.shortlist, fresh, progress=job.progress) if fresh else None
    mixed = _mixed_table(old_embeds, new_embeds and FeatureTable(new_embeds.embeds), from_old, rows)
    np.save(job.work / "caption_embeddings.npy", mixed.embeds[0 : len(texts)].astype(np.float32))
    if encoders.head_model is not None:
        old_head = read_table(previous, HEAD_CAPTIONS) if old_row else None
        new_head = None
        if fresh:
            new_head = encode_texts(
                encoders.head_model,
                fresh,
                progress=job.progress,
                keep_tokens=encoders.keep_tokens,
                token_dtype=str(encoders.token_dtype),
            )
        join_tables([_mixed_table(old_head, new_head, from_old, rows)], job.work, HEAD_CAPTIONS)
    write_columns(job.work, "captions", {"text": texts, "item_id": [c.item_id for c in captions]})
    return len(texts)


def _update_search(
    previous: Path,
    old_meta: dict,
    embeddings: np.ndarray,
    old_rows: np.ndarray,
    work: Path,
    on_disk: bool,
    memory_budget_bytes: int | None,
    retrain: bool,
) -> tuple[IndexChoice, str, int]:
    """Write the new version's search structure into ``work``; returns its choice, storage and the size it
    was trained on. ``old_rows``: the previous version's rows that the new version's first rows are."""
    old_choice = IndexChoice(**old_meta["choice"])
    n, dim = embeddings.shape
    trained_on = int(old_meta.get("trained_on", old_meta["items"]))
    if retrain:
        choice = choose_index(n, dim, memory_budget_bytes)
        return choice, write_faiss_index(embeddings, choice, work, on_disk), n
    if old_choice.kind == "exact":
        return old_choice, write_faiss_index(embeddings, old_choice, work, on_disk), trained_on
    if on_disk:
        _refill_on_disk(previous, embeddings, work)
        return old_choice, "on_disk", trained_on
    _add_and_remove(previous, int(old_meta["items"]), embeddings, old_rows, work)
    return old_choice, "memory", trained_on


def _add_and_remove(
    previous: Path, n_old: int, embeddings: np.ndarray, old_rows: np.ndarray, work: Path
) -> None:
    """Remove the dropped rows' vectors from the trained in-memory index and add the new rows' under new
    labels; the labels of every row go to :data:`FAISS_LABELS`."""
    import faiss

    index = faiss.read_index(str(previous / "faiss.index"))
    labels_file = previous / FAISS_LABELS
    old_labels = np.load(labels_file) if labels_file.is_file() else np.arange(n_old, dtype=np.int64)
    dropped = np.setdiff1d(np.arange(n_old), old_rows)
    if len(dropped):
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(old_labels[dropped], dtype=np.int64)))
    first = int(old_labels.max()) + 1 if len(old_labels) else 0
    new_labels = np.arange(first, first + len(embeddings) - len(old_rows), dtype=np.int64)
    if len(new_labels):
        index.add_with_ids(np.ascontiguousarray(embeddings[len(old_rows) :], dtype=np.float32), new_labels)
    labels = np.concatenate([old_labels[old_rows], new_labels])
    np.save(work / FAISS_LABELS, labels)
    faiss.write_index(index, str(work / "faiss.index"))


def _refill_on_disk(previous: Path, embeddings: np.ndarray, work: Path) -> None:
    """Add every row again, shard by shard, to the on-disk index's trained quantizer emptied of its lists,
    and merge the shards' lists on disk (nothing is trained again; labels are the row numbers)."""
    import faiss

    from vlret.index.ondisk import merge_on_disk, read_on_disk, write_shards

    trained = read_on_disk(previous / "faiss.index")
    ivf = faiss.extract_index_ivf(trained)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index owns the lists now
    ivf.ntotal = trained.ntotal = 0
    shards = write_shards(trained, embeddings, work / "shards", ONDISK_SHARD_ROWS)
    merge_on_disk(trained, shards, work / "faiss.index")
    shutil.rmtree(work / "shards")


def retrain_due(
    choice: dict, n: int, dim: int, trained_on: int, memory_budget_bytes: int | None
) -> str | None:
    """Why the search structure should be made again for ``n`` items (None: it need not be)."""
    fresh = choose_index(n, dim, memory_budget_bytes)
    if fresh.kind != choice["kind"]:
        return (
            f"the collection holds {n} items: a fresh build would choose {fresh.kind} ({fresh.reason}), and "
            f"the index is {choice['kind']}. Run the update with --retrain"
        )
    if choice["kind"] != "exact" and not (trained_on / RETRAIN_FACTOR <= n <= trained_on * RETRAIN_FACTOR):
        return (
            f"the collection holds {n} items and its {choice['kind']} index was trained on {trained_on}: "
            "its lists were cut for another size. Run the update with --retrain"
        )
    return None


def update_imported(
    previous: Path,
    incoming: Path,
    ids: list[str],
    paths: list[str],
    work: Path,
    on_disk: bool,
    memory_budget_bytes: int | None,
    retrain: bool,
    allow_mass_removal: bool,
) -> tuple[dict, dict] | None:
    """An update of an index imported from embeddings (``--embeddings``): an item whose id the index holds
    with the same vector keeps its row and label; others are added, ids that are gone removed. The rows
    of ``incoming`` (normalised) are written into ``work`` in the new order, with the items and the search
    structure; returns ``(meta fields, counts)``, or None when nothing changed."""
    old_meta = read_json(previous / "index.json")
    old_items = StringTable.open(previous, "items", ITEM_FIELDS)
    old_embeds = np.load(previous / "embeddings.npy", mmap_mode="r")
    vectors = np.load(incoming, mmap_mode="r")
    carried: list[tuple[int, int]] = []  # (old row, incoming row)
    added: list[int] = []
    for i, item_id in enumerate(ids):
        try:
            row = old_items.number_of(item_id)
        except KeyError:
            added.append(i)
            continue
        if old_embeds[row].tobytes() == vectors[i].tobytes():
            carried.append((row, i))
        else:
            added.append(i)
    listed = set(ids)
    removed = sum(1 for item in old_items if item["id"] not in listed)
    counts = {"unchanged": len(carried), "new": len(added) - (len(old_items) - removed - len(carried)),
              "edited": len(old_items) - removed - len(carried), "removed": removed}  # fmt: skip
    if removed > MASS_REMOVAL_SHARE * len(old_items) and not allow_mass_removal:
        raise ConfigError(
            f"the update would remove {removed} of the index's {len(old_items)} items "
            f"({removed / len(old_items):.0%}, more than {MASS_REMOVAL_SHARE:.0%}): are these the right "
            "embeddings? If the items were deleted on purpose, run again with --allow-mass-removal"
        )
    carried.sort()
    old_paths = {old_items[row]["path"]: row for row, _ in carried}
    same_paths = all(old_paths.get(paths[i]) == row for row, i in carried)
    if not added and not removed and same_paths and not retrain:
        return None
    order = np.array([i for _, i in carried] + added, dtype=np.int64)
    join_tables([FeatureTable(_Taken(vectors, order))], work, "ordered")
    incoming.unlink()
    os.replace(work / "ordered.embeds.npy", work / "embeddings.npy")
    embeddings = np.load(work / "embeddings.npy", mmap_mode="r")
    write_columns(
        work, "items", {"id": [ids[i] for i in order], "path": [paths[i] for i in order]}, sort_by="id"
    )
    old_rows = np.array([row for row, _ in carried], dtype=np.int64)
    choice, storage, trained_on = _update_search(
        previous, old_meta, embeddings, old_rows, work, on_disk, memory_budget_bytes, retrain
    )
    fields = {
        "choice": choice,
        "storage": storage,
        "trained_on": trained_on,
        "created": old_meta.get("created"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "update": counts,
    }
    return fields, counts
