"""VISA's throughput against a local OpenAI-compatible server that waits 100 ms per call, in one run.

The pipeline (50 queries, K = 20, Q = 3, describer + question generator + VQA over HTTP, lexical reranker)
runs at its default concurrency (each round with a fresh cache); the baseline is the same calls made one after
another. Rounds are interleaved (pipeline, sequential, ...) and the best of each kept (see timing.py). By default the
baseline times 150 sequential calls and scales by the pipeline's number of calls (a full sequential run takes
over 5 minutes; ``--full-baseline`` does it). A second pipeline run over the same cache must make 0 calls.
Target: speed-up >= 8, printed last.

    .venv/bin/python bench/visa_throughput.py [--queries 50] [--full-baseline]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from json_server import QuietHandler  # noqa: E402
from timing import best, interleaved, parse_args, spread
from vlret.data import load_dataset
from vlret.data.synth import SynthConfig, write_benchmark
from vlret.rerank.backends.openai_http import OpenAIChat
from vlret.rerank.visa.config import VisaConfig
from vlret.rerank.visa.pipeline import Roles
from vlret.rerank.visa.run import base_from_scores, run_visa

DELAY = 0.1


def questions_reply(prompt: str) -> str:
    """Questions that name the query, so no two queries share an answer in the cache."""
    sentence = prompt.rsplit("Sentence:", 1)[-1].strip()
    asks = [f"Is there {sentence}?", f"What colour is {sentence}?", f"Where is {sentence}?"]
    return f"key phrases:\n1. {sentence}\nquestions:\n" + "\n".join(
        f"{i}. {q}" for i, q in enumerate(asks, 1)
    )


class SlowServer(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(DELAY)
        content = body["messages"][0]["content"]
        text = content if isinstance(content, str) else content[-1]["text"]
        answer = questions_reply(text) if "questions:" in text else "A red circle in the top left."
        reply = {
            "choices": [{"message": {"content": answer}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8},
        }
        self.send_json(200, reply)


#: --smoke: sizes that run in seconds
SMOKE = {"images": 40, "queries": 2, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000, help="synthetic benchmark size")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--full-baseline", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved rounds (pipeline, sequential, ...)"
    )
    args = parse_args(parser, SMOKE)

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = {
        "backend": "openai",
        "model": "slow",
        "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
    }
    config = VisaConfig(describer=spec, question_generator=spec, vqa=spec, reranker={"backend": "lexical"})
    with tempfile.TemporaryDirectory() as tmp:
        data = write_benchmark(Path(tmp) / "synth", SynthConfig(images=args.images, seed=0))
        split = load_dataset(data).split("test")
        scores = (
            np.random.default_rng(0).normal(size=(len(split.captions), len(split.items))).astype(np.float32)
        )
        base = base_from_scores(scores, split, config.k)

        calls_made: list[int] = []
        round_dirs = iter(range(10_000))

        def pipeline() -> float:
            roles = Roles.from_config(config)
            folder = Path(tmp) / f"run-{next(round_dirs)}"  # a fresh cache: every unit is computed
            start = time.perf_counter()
            result = run_visa(split, *base, config, folder, roles=roles, query_limit=args.queries)
            seconds = time.perf_counter() - start
            calls_made.append(
                sum(s["computed"] for name, s in result["stages"].items() if name != "text_scores")
            )
            return seconds

        chat = OpenAIChat("slow", base_url=spec["base_url"])
        image = split.media_path(split.items[0])

        def sequential() -> float:
            n_seq = calls_made[-1] if args.full_baseline else min(150, calls_made[-1])
            start = time.perf_counter()
            for _ in range(n_seq):
                chat.chat("What shape is it?", [image])
            return (time.perf_counter() - start) * calls_made[-1] / n_seq

        seconds = interleaved({"pipeline": pipeline, "sequential": sequential}, args.repeats)
        calls = calls_made[-1]
        n_seq = calls if args.full_baseline else min(150, calls)

        again = Roles.from_config(config)
        run_visa(split, *base, config, Path(tmp) / "run-0", roles=again, query_limit=args.queries)
        second_calls = sum(
            getattr(again, r).chat_model.usage.calls for r in ("describer", "question_generator", "vqa")
        )
    server.shutdown()
    label = "measured" if n_seq == calls else f"{n_seq} calls timed, scaled to {calls}"
    print(
        f"queries={args.queries} K={config.k} Q={config.questions} concurrency={config.concurrency} calls={calls}"
    )
    print(spread("pipeline", seconds["pipeline"], "s"))
    print(spread(f"sequential ({label})", seconds["sequential"], "s"))
    print(f"second run over the same cache: {second_calls} calls")
    print(f"speed-up: {best(seconds['sequential']) / best(seconds['pipeline']):.1f}x")


if __name__ == "__main__":
    main()
