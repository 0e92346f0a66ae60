"""An inverted-file index whose lists live on disk: FAISS's own shards and on-disk merge.

The vectors of a large collection need not fit one process's memory, at build time or at search time:

1. the coarse quantizer is trained once, on a sample (:func:`train_ivf`);
2. each shard of rows is added to a copy of the trained, empty index with its *global* row numbers
   (``add_with_ids``) and written on its own (:func:`write_shards`), so no process holds more than a shard;
3. the shards' inverted lists are merged into one ``.ivfdata`` file (:func:`merge_on_disk`, FAISS's
   ``merge_ondisk``), which a searcher opens without reading it (:func:`read_on_disk`): each query reads
   the lists it probes, through the page cache.

The merged index finds what an index built in one process from the same trained quantizer finds: the same
lists, holding the same codes under the same ids. Shards can also be searched side by side in memory
(:func:`open_shards`); their ids are already global, so they must not be renumbered.

FAISS pitfalls met here: an on-disk list's default prefetch threads cost more than the search
(:func:`read_on_disk` turns them off); ``IO_FLAG_MMAP`` on the merged index crashed faiss-cpu 1.15.1, so it is opened
with ``IO_FLAG_ONDISK_SAME_DIR`` (the ``.ivfdata`` is looked for beside the index file, wherever the folder
has been moved); ``IndexShards(successive_ids=True)`` silently adds each shard's offset to ids that are
already global (recall fell to 0.257 in a trial).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the file beside ``faiss.index`` that holds a merged index's inverted lists
IVF_DATA = "faiss.ivfdata"
#: vectors the quantizer is trained on, at most (drawn with a fixed seed)
TRAIN_SAMPLE = 256 * 1024


def _faiss():
    import faiss

    return faiss


def training_sample(vectors: np.ndarray, size: int = TRAIN_SAMPLE, seed: int = 0) -> np.ndarray:
    """At most ``size`` rows of ``vectors``, drawn without replacement by a fixed seed, in row order (so a
    memory-mapped array is read forwards)."""
    if len(vectors) <= size:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def train_ivf(factory: str, vectors: np.ndarray, metric: str = "inner_product"):
    """An empty index built by the FAISS ``factory`` string, trained on a sample of ``vectors``."""
    faiss = _faiss()
    metric_type = faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2
    index = faiss.index_factory(vectors.shape[1], factory, metric_type)
    if hasattr(index, "do_polysemous_training"):
        # FAISS trains IVF-PQ codes for Hamming-filtered search by default; vlret never searches that way
        # (polysemous_ht stays 0), and that training took 290 of 290 s for 4,000 x 128 vectors (13 s without)
        index.do_polysemous_training = False
    if not index.is_trained:
        index.train(training_sample(vectors))
    return index


def shard_bounds(n: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges that cover ``n`` rows, ``rows_per_shard`` each (the last may be shorter)."""
    if rows_per_shard < 1:
        raise ValueError(f"rows per shard must be at least 1, not {rows_per_shard}")
    return [(start, min(start + rows_per_shard, n)) for start in range(0, n, rows_per_shard)]


def write_shard(trained, vectors: np.ndarray, first_row: int, path: Path) -> Path:
    """Add ``vectors`` (rows ``first_row, first_row + 1, ...`` of the collection) to a copy of the trained,
    empty index under their global row numbers, and write it to ``path``."""
    faiss = _faiss()
    if trained.ntotal:
        raise ValueError("the trained index must be empty: shards are added to copies of it")
    shard = faiss.clone_index(trained)
    ids = np.arange(first_row, first_row + len(vectors), dtype=np.int64)
    shard.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    faiss.write_index(shard, str(path))
    return path


def write_shards(trained, vectors: np.ndarray, folder: Path, rows_per_shard: int) -> list[Path]:
    """Write ``vectors`` (a memory-mapped array is read one shard at a time) as shards in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_shard(trained, vectors[start:stop], start, folder / f"shard-{n:05d}.index")
        for n, (start, stop) in enumerate(shard_bounds(len(vectors), rows_per_shard))
    ]


def merge_on_disk(trained, shards: list[Path], index_file: Path) -> Path:
    """Merge the shards' inverted lists into ``IVF_DATA`` beside ``index_file``, and write the index that
    refers to it there. ``trained`` (empty) becomes the merged index; its lists stay on disk."""
    faiss = _faiss()
    from faiss.contrib.ondisk import merge_ondisk

    if not shards:
        raise ValueError("no shards to merge")
    data = index_file.with_name(IVF_DATA)
    data.unlink(missing_ok=True)  # a merge killed half-way left a partial file
    merged = faiss.clone_index(trained)
    merge_ondisk(merged, [str(s) for s in shards], str(data.resolve()), shift_ids=False)
    faiss.write_index(merged, str(index_file))
    return index_file


def build_on_disk(factory: str, vectors: np.ndarray, folder: Path, rows_per_shard: int) -> Path:
    """Train on a sample, write the shards, merge them on disk into ``folder/faiss.index`` and remove the
    shards; returns the index file."""
    trained = train_ivf(factory, vectors)
    shards = write_shards(trained, vectors, folder / "shards", rows_per_shard)
    index_file = merge_on_disk(trained, shards, folder / "faiss.index")
    for shard in shards:
        shard.unlink()
    (folder / "shards").rmdir()
    return index_file


def read_on_disk(index_file: Path):
    """Open a merged index without reading its inverted lists (they are read per query, from the
    ``IVF_DATA`` file beside it)."""
    faiss = _faiss()
    if not index_file.with_name(IVF_DATA).is_file():
        raise OSError(f"{IVF_DATA} is missing beside {index_file.name}")
    index = faiss.read_index(str(index_file), faiss.IO_FLAG_ONDISK_SAME_DIR)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    # FAISS starts 32 threads per search to prefetch the probed lists: 5x the latency of a single query
    # here (1.9 against 0.36 ms at 200K x 64); the page cache and the kernel's read-ahead do that job
    lists.prefetch_nthread = 0
    return index


def open_shards(shards: list[Path], nprobe: int = 1):
    """Shards searched side by side in memory, as one index over their global ids."""
    faiss = _faiss()
    parts = [faiss.read_index(str(path)) for path in shards]
    combined = faiss.IndexShards(parts[0].d, True, False)  # threaded; successive_ids=False: ids are global
    for part in parts:
        if hasattr(part, "nprobe"):
            part.nprobe = nprobe
        combined.add_shard(part)
    combined.own_indices = True
    for part in parts:
        part.this.disown()
    return combined
