"""Requests per second and latency of text search over HTTP on loopback, against the same searches
in-process, in one run.

Builds a small index (the synthetic test images, a fresh tiny model) and serves it with uvicorn on a thread
of this process. The load comes from another process, ``--clients`` concurrent connections: ``wrk`` (Debian's
package) when it is installed, otherwise a Python client (httpx), which itself tops out near 300 requests/s
on 2 cores and then measures the client more than the server. The baseline is the same searches called one
after another in-process (``Searcher.text_to_image``), so the ratio is what HTTP, JSON and concurrency cost
or gain on top. Rounds are interleaved (in-process, HTTP, in-process, ...) and the best of each is kept (see
timing.py). Zero failed requests are expected. Target: ratio >= 0.6 with 8 or more clients. The ratio is
printed last.

    .venv/bin/python bench/serve_load.py [--requests 500] [--clients 8] [--repeats 3]

``--replicas N`` measures replicas instead: ``vlret serve --workers N`` against ``vlret serve`` (one
replica), both as processes of their own over the same index, loaded in interleaved rounds by the same
client; it prints both request rates and their ratio last (N replicas / 1).

    .venv/bin/python bench/serve_load.py --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from timing import best, interleaved, parse_args, spread
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


def client_process(url: str, requests: int, clients: int, out) -> None:
    """Send ``requests`` searches over ``clients`` connections; report (seconds, latencies, failures)."""

    async def run() -> tuple[float, list[float], int]:
        latencies, failed = [], 0
        counter = iter(range(requests))
        async with httpx.AsyncClient(
            base_url=url, timeout=30, limits=httpx.Limits(max_connections=clients)
        ) as c:
            await c.get("/health")  # connect before the clock starts

            async def worker() -> None:
                nonlocal failed
                for n in counter:
                    t = time.perf_counter()
                    try:
                        ok = (
                            await c.get("/api/search", params={"q": QUERIES[n % 4], "k": 10})
                        ).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    failed += not ok
                    latencies.append(time.perf_counter() - t)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return time.perf_counter() - start, latencies, failed

    out.send(asyncio.run(run()))


WRK_SCRIPT = """
local queries = {"a+red+circle", "two+blue+squares", "a+large+striped+yellow+triangle+on+the+left",
                 "a+small+green+diamond"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/search?k=10&q=" .. queries[n % 4 + 1])
end
"""


def wrk_run(url: str, clients: int, seconds: float, script: Path) -> tuple[float, list[float], int]:
    """(seconds per request, [p50, p99] latencies, failures) from one ``wrk`` run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    failed = sum(
        int(x)
        for x in re.findall(
            r"(?:Non-2xx or 3xx responses|errors: connect \d+, read \d+, write \d+, timeout):?\s*(\d+)", out
        )
    )

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]

    return 1 / rate, [percentile("50"), percentile("99")], failed


def serve_process(index: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """``vlret serve INDEX --workers N`` on a free port, answering; returns the process and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ["serve", str(index), "--workers", str(workers), "--port", str(port)]
    server = subprocess.Popen([sys.executable, "-m", "vlret.cli", *command], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"vlret serve --workers {workers} exited with {server.returncode}")
        try:
            httpx.get(f"{url}/health", timeout=5)
            return server, url
        except httpx.HTTPError:
            time.sleep(0.2)


def load_round(url: str, args, script: Path, runs: list) -> float:
    """One round of load on ``url``: requests per second (wrk when installed, else a client process)."""
    if shutil.which("wrk"):
        seconds_per_request, latencies, failed = wrk_run(url, args.clients, args.seconds, script)
        runs.append((seconds_per_request * args.requests, latencies, failed))
        return 1 / seconds_per_request
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    proc = context.Process(target=client_process, args=(url, args.requests, args.clients, send))
    proc.start()
    runs.append(receive.recv())
    proc.join()
    return args.requests / runs[-1][0]


def compare_replicas(args, index: Path, script: Path) -> None:
    """N replicas against one, as separate servers over the same index, in interleaved rounds."""
    servers = {
        "1 replica": serve_process(index, 1),
        f"{args.replicas} replicas": serve_process(index, args.replicas),
    }
    runs: dict[str, list] = {name: [] for name in servers}
    try:
        for _, url in servers.values():  # warm-up: every replica's first queries
            for n in range(8 * args.replicas):
                httpx.get(f"{url}/api/search", params={"q": QUERIES[n % 4], "k": 10}, timeout=60)
        rates = interleaved(
            {
                name: (lambda url=url, name=name: load_round(url, args, script, runs[name]))
                for name, (_, url) in servers.items()
            },
            args.repeats,
        )
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=60)
    client = "wrk" if shutil.which("wrk") else "httpx (client-bound: install wrk to measure the server)"
    failed = sum(r[2] for name in runs for r in runs[name])
    print(f"client={client} clients={args.clients} failed={failed}")
    for name in servers:
        print(spread(name, rates[name], "requests/s", higher_is_better=True))
    one, many = rates["1 replica"], rates[f"{args.replicas} replicas"]
    print(
        f"ratio ({args.replicas} replicas / 1 replica, requests/s): {best(many, True) / best(one, True):.2f}"
    )


#: --smoke: sizes that run in seconds
SMOKE = {"images": 40, "requests": 20, "clients": 2, "repeats": 1, "seconds": 0.5}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--images", type=int, default=2000, help="synthetic benchmark size (its test split is indexed)"
    )
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each wrk run")
    parser.add_argument(
        "--replicas", type=int, default=1, help="N > 1: N replica processes against one, instead"
    )
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_benchmark(root / "synth", SynthConfig(images=args.images, seed=0))
        dataset = load_dataset(data)
        create_model("tiny-cnn", captions=[c.text for c in dataset.split("train").captions]).save(
            root / "model"
        )
        index = build_index(str(root / "model"), root / "idx", dataset=dataset.split("test"), progress=False)
        script = root / "queries.lua"
        script.write_text(WRK_SCRIPT)
        if args.replicas > 1:
            compare_replicas(args, index, script)
            return
        searcher = Searcher(index)

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
        http_runs: list[tuple[float, list[float], int]] = []

        def in_process() -> float:
            start = time.perf_counter()
            for n in range(args.requests):
                searcher.text_to_image(QUERIES[n % len(QUERIES)], 10)
            return args.requests / (time.perf_counter() - start)

        def over_http() -> float:
            return load_round(f"http://127.0.0.1:{port}", args, script, http_runs)

        in_process()  # warm-up
        rates = interleaved({"in-process": in_process, "http": over_http}, args.repeats)
        server.should_exit = True
        thread.join(timeout=10)
    fastest = max(http_runs, key=lambda r: -r[0])
    latencies = np.array(fastest[1])
    client = "wrk" if shutil.which("wrk") else "httpx (client-bound: install wrk to measure the server)"
    print(f"client={client} clients={args.clients} failed={sum(r[2] for r in http_runs)}")
    print(spread("in-process searches", rates["in-process"], "/s", higher_is_better=True))
    print(spread("HTTP", rates["http"], "requests/s", higher_is_better=True))
    print(
        f"HTTP latency (best round): p50 {np.percentile(latencies, 50) * 1000:.1f} ms  "
        f"p99 {np.percentile(latencies, 99) * 1000:.1f} ms"
    )
    print(f"ratio (HTTP rps / in-process): {best(rates['http'], True) / best(rates['in-process'], True):.2f}")


if __name__ == "__main__":
    main()
