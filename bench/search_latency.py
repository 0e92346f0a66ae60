"""Query latency and recall@10 of vlret's index against the same FAISS index called directly, in one run.

1,000,000 x 512 clustered, L2-normalised vectors (10,000 Gaussian clusters; queries are stored vectors plus
noise of norm 0.5). The index is the one vlret chooses for that size (IVF-Flat); vlret's side is
``Searcher.image_hits`` (the search plus building the hit list), FAISS's side is ``index.search`` on the same
object. Rounds over all queries are interleaved (FAISS, vlret, FAISS, ...) and the best p50 of each side is
kept (see timing.py).
Target: overhead ratio (vlret p50 / FAISS p50) <= 1.1 at recall@10 >= 0.95. The ratio is printed last.

    .venv/bin/python bench/search_latency.py [--n 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from timing import best, interleaved, parse_args, spread
from vlret.index.build import write_faiss_index
from vlret.index.choice import choose_index
from vlret.index.search import Searcher


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = centres[rng.integers(0, clusters, stop - start)] + 0.4 * rng.standard_normal(
            (stop - start, dim), dtype=np.float32
        )
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(times, q) * 1000)


#: --smoke: sizes that run in seconds
SMOKE = {"n": 2000, "dim": 16, "queries": 20, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds (faiss, vlret, faiss, ...)"
    )
    args = parse_args(parser, SMOKE)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    vectors = clustered(args.n, args.dim, 10_000, rng)
    picks = rng.integers(0, args.n, args.queries)
    queries = (
        vectors[picks]
        + 0.3 * rng.standard_normal((args.queries, args.dim), dtype=np.float32) / np.sqrt(args.dim) * 4
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.empty((args.queries, 10), dtype=np.int64)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    del exact
    choice = choose_index(args.n, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "embeddings.npy", vectors)
        (folder / "items.json").write_text(
            json.dumps([{"id": str(i), "path": f"{i}.jpg"} for i in range(args.n)])
        )
        write_faiss_index(vectors, choice, folder, on_disk=False)
        meta = {
            "model": "none",
            "media_root": tmp,
            "items": args.n,
            "captions": 0,
            "dim": args.dim,
            "choice": choice.as_dict(),
        }
        (folder / "index.json").write_text(json.dumps(meta))
        built = time.perf_counter() - started
        searcher = Searcher(folder)
        raw = searcher.images.faiss_index  # the very same FAISS object, nprobe already set

        def faiss_direct(q):
            return raw.search(q.reshape(1, -1), 10)[1][0]

        def through_vlret(q):
            return [int(h.id) for h in searcher.image_hits(q, 10)]

        runs: dict[str, list[tuple[list[float], float]]] = {"faiss": [], "vlret": []}

        def side(name, fn):
            def run() -> float:  # one pass over the queries; returns its p50, keeps times and recall
                times, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    found.append(fn(q))
                    times.append(time.perf_counter() - t)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
                runs[name].append((times, float(recall)))
                return float(np.percentile(times, 50))

            return run

        p50 = interleaved(
            {"faiss": side("faiss", faiss_direct), "vlret": side("vlret", through_vlret)}, args.repeats
        )
    f_times, f_recall = min(runs["faiss"], key=lambda r: np.percentile(r[0], 50))
    v_times, v_recall = min(runs["vlret"], key=lambda r: np.percentile(r[0], 50))
    print(
        f"n={args.n} dim={args.dim} index={choice.factory} nprobe={choice.nprobe} (built in {built:.0f} s) queries={args.queries}"
    )
    print(
        f"faiss direct: p50 {percentile_ms(f_times, 50):.3f} ms  p99 {percentile_ms(f_times, 99):.3f} ms  recall@10 {f_recall:.3f}"
    )
    print(
        f"through vlret: p50 {percentile_ms(v_times, 50):.3f} ms  p99 {percentile_ms(v_times, 99):.3f} ms  recall@10 {v_recall:.3f}"
    )
    print(spread("faiss p50 per round", p50["faiss"], "ms", scale=1000))
    print(spread("vlret p50 per round", p50["vlret"], "ms", scale=1000))
    print(f"overhead ratio (p50): {best(p50['vlret']) / best(p50['faiss']):.2f}")


if __name__ == "__main__":
    main()
