"""Search latency and memory of an index whose lists are on disk against the same index in memory.

1,000,000 x 512 clustered, L2-normalised vectors (as in search_latency.py). One quantizer is trained; the
in-memory index gets every vector in one process; the on-disk one is written as 4 shards with global ids and
merged on disk (:mod:`vlret.index.ondisk`). Both are searched through ``Searcher.image_hits``, one query at
a time; rounds over all queries are interleaved (memory, on disk, memory, ...) and each side keeps its best
p50 (see timing.py). Each searcher's memory is read in a process of its own that opens the index and runs
every query: its peak RSS (``VmHWM``; ``ru_maxrss`` would carry the parent's peak across ``exec``), and its
anonymous RSS (what it holds beyond the pages of the files it maps, which the kernel can drop).
Target: p50 ratio (on disk / memory) <= 1.3 at recall@10 >= 0.95. The ratio is printed last.

    .venv/bin/python bench/ondisk_search.py [--n 1000000] [--shards 4] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from search_latency import clustered, percentile_ms
from timing import best, interleaved, parse_args, spread
from vlret.index.choice import choose_index
from vlret.index.columns import write_columns
from vlret.index.ondisk import merge_on_disk, train_ivf, write_shards
from vlret.index.search import Searcher

#: --smoke: sizes that run in seconds
SMOKE = {"n": 4000, "dim": 16, "queries": 20, "repeats": 1}


def write_index_folder(folder: Path, embeddings: Path, n: int, dim: int, choice, storage: str) -> None:
    """An index folder around a FAISS index already written there: the shared embeddings, items, meta."""
    (folder / "embeddings.npy").symlink_to(embeddings)
    write_columns(
        folder, "items", {"id": [str(i) for i in range(n)], "path": [f"{i}.jpg" for i in range(n)]}, "id"
    )
    meta = {"model": "none", "media_root": str(folder), "items": n, "captions": 0, "dim": dim}
    meta |= {"choice": choice.as_dict(), "storage": storage}
    (folder / "index.json").write_text(json.dumps(meta))


def memory_of_searcher(folder: Path, queries: Path) -> str:
    """Open the index in a fresh process, run every query, and report its memory."""
    code = (
        "import sys, numpy as np; from vlret.index.search import Searcher\n"
        "s = Searcher(sys.argv[1]); q = np.load(sys.argv[2])\n"
        "for v in q: s.image_hits(v, 10)\n"
        "kib = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(('VmHWM', 'RssAnon'))}\n"
        "print(f\"peak RSS {kib['VmHWM'] / 1024:.0f} MiB, anonymous RSS {kib['RssAnon'] / 1024:.0f} MiB\")\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(queries)], capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    args = parse_args(parser, SMOKE)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    vectors = clustered(args.n, args.dim, max(10, min(10_000, args.n // 100)), rng)
    picks = rng.integers(0, args.n, args.queries)
    queries = vectors[picks] + 1.2 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    ) / np.sqrt(args.dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    del exact
    choice = choose_index(args.n, args.dim)
    if choice.kind == "exact":  # the smoke size: still an inverted-file index, the thing measured here
        choice = choose_index(200_000, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.save(root / "embeddings.npy", vectors)
        np.save(root / "queries.npy", queries)
        trained = train_ivf(choice.factory, vectors)
        in_memory, on_disk = root / "memory", root / "disk"
        in_memory.mkdir()
        on_disk.mkdir()
        whole = faiss.clone_index(trained)
        whole.add(vectors)
        faiss.write_index(whole, str(in_memory / "faiss.index"))
        del whole
        shards = write_shards(trained, vectors, root / "shards", -(-args.n // args.shards))
        merge_on_disk(trained, shards, on_disk / "faiss.index")
        del vectors
        for folder, storage in ((in_memory, "memory"), (on_disk, "on_disk")):
            write_index_folder(folder, root / "embeddings.npy", args.n, args.dim, choice, storage)
        built = time.perf_counter() - started
        searchers = {"memory": Searcher(in_memory), "on disk": Searcher(on_disk)}
        runs: dict[str, list[tuple[list[float], float]]] = {name: [] for name in searchers}

        def side(name):
            def run() -> float:  # one pass over the queries; returns its p50, keeps times and recall
                times, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    found.append([int(h.id) for h in searchers[name].image_hits(q, 10)])
                    times.append(time.perf_counter() - t)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
                runs[name].append((times, float(recall)))
                return float(np.percentile(times, 50))

            return run

        p50 = interleaved({name: side(name) for name in searchers}, args.repeats)
        searchers.clear()  # their memory is measured below, in processes of their own
        memory = {
            name: memory_of_searcher(f, root / "queries.npy")
            for name, f in (("memory", in_memory), ("on disk", on_disk))
        }
        sizes = {
            "memory": (in_memory / "faiss.index").stat().st_size,
            "on disk": (on_disk / "faiss.index").stat().st_size + (on_disk / "faiss.ivfdata").stat().st_size,
        }
    print(
        f"n={args.n} dim={args.dim} index={choice.factory} nprobe={choice.nprobe} shards={args.shards} "
        f"(built in {built:.0f} s) queries={args.queries}"
    )
    for name in runs:
        times, recall = min(runs[name], key=lambda r: np.percentile(r[0], 50))
        print(
            f"{name}: p50 {percentile_ms(times, 50):.3f} ms  p99 {percentile_ms(times, 99):.3f} ms  "
            f"recall@10 {recall:.3f}  files {sizes[name] / 2**20:.0f} MiB  searcher: {memory[name]}"
        )
    for name in runs:
        print(spread(f"{name} p50 per round", p50[name], "ms", scale=1000))
    print(f"p50 ratio (on disk / memory): {best(p50['on disk']) / best(p50['memory']):.2f}")


if __name__ == "__main__":
    main()
