"""Scoring + metrics of vlret's chunked evaluator against one plain matmul of the same shape, in one run.

5,000 items x 25,000 captions (5 per item), random L2-normalised 512-d embeddings. The evaluator never holds
more than one chunk of scores; the baseline forms the whole 25,000 x 5,000 matrix and computes nothing else.
Repetitions are interleaved (matmul, evaluator, matmul, ...) and the best of each is kept (see timing.py).
Target: ratio <= 1.10. The ratio is printed last.

    .venv/bin/python bench/eval_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from timing import best, interleaved, parse_args, spread
from vlret.evaluate.metrics import retrieval_metrics
from vlret.evaluate.ranking import rank_embeddings


def timed(fn):
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


#: --smoke: sizes that run in seconds
SMOKE = {"items": 50, "dim": 32, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, SMOKE)

    gen = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(args.items, args.dim, generator=gen), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(5 * args.items, args.dim, generator=gen), dim=1)
    text_to_item = np.repeat(np.arange(args.items), 5)

    def evaluator() -> dict:
        ranks = rank_embeddings(texts, items, text_to_item)
        return retrieval_metrics(ranks.t2i, ranks.i2t)

    def plain_matmul() -> torch.Tensor:
        return texts @ items.T

    plain_matmul(), evaluator()  # warm up allocators and BLAS threads
    times = interleaved({"matmul": timed(plain_matmul), "evaluator": timed(evaluator)}, args.repeats)
    print(f"threads: {torch.get_num_threads()}, shape: {len(texts)} x {len(items)} x {args.dim}")
    print(spread("plain matmul", times["matmul"], "s"))
    print(spread("vlret scoring + metrics", times["evaluator"], "s"))
    print(f"ratio: {best(times['evaluator']) / best(times['matmul']):.2f}")


if __name__ == "__main__":
    main()
