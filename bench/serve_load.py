"""Requests per second and latency of text search over HTTP on loopback, with a bounded number of requests.

Builds a small index (the synthetic test images, a fresh tiny model), serves it with uvicorn in this process,
and sends ``--requests`` text searches from ``--clients`` concurrent clients. The baseline is the same
searches called in-process (``Searcher.text_to_image``), so the ratio is what HTTP and JSON cost on top.
Zero failed requests are expected. The ratio is printed last.

    .venv/bin/python bench/serve_load.py [--requests 500] [--clients 8]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from vlret.data import load_dataset
from vlret.data.synth import SynthConfig, write_benchmark
from vlret.index import Searcher, build_index
from vlret.models import create_model
from vlret.serve import create_app

QUERIES = [
    "a red circle",
    "two blue squares",
    "a large striped yellow triangle on the left",
    "a small green diamond",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_benchmark(root / "synth", SynthConfig(images=2000, seed=0))
        dataset = load_dataset(data)
        create_model("tiny-cnn", captions=[c.text for c in dataset.split("train").captions]).save(
            root / "model"
        )
        index = build_index(str(root / "model"), root / "idx", dataset=dataset.split("test"), progress=False)

        searcher = Searcher(index)
        start = time.perf_counter()
        for n in range(args.requests):
            searcher.text_to_image(QUERIES[n % len(QUERIES)], 10)
        in_process = args.requests / (time.perf_counter() - start)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=args.clients)
        )

        def one(n: int) -> tuple[bool, float]:
            t = time.perf_counter()
            try:
                ok = (
                    client.get("/api/search", params={"q": QUERIES[n % len(QUERIES)], "k": 10}).status_code
                    == 200
                )
            except httpx.HTTPError:
                ok = False
            return ok, time.perf_counter() - t

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            outcomes = list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - start
        server.should_exit = True
        thread.join(timeout=10)
    latencies = np.array([t for _, t in outcomes])
    failed = sum(not ok for ok, _ in outcomes)
    rps = args.requests / elapsed
    print(f"requests={args.requests} clients={args.clients} failed={failed}")
    print(
        f"HTTP: {rps:.0f} requests/s  p50 {np.percentile(latencies, 50) * 1000:.1f} ms  p99 {np.percentile(latencies, 99) * 1000:.1f} ms"
    )
    print(f"in-process searches: {in_process:.0f} /s")
    print(f"ratio (HTTP rps / in-process): {rps / in_process:.2f}")


if __name__ == "__main__":
    main()
