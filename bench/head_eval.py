"""Memory of the chunked evaluator on a token-level head against one straightforward pass, in one run.

A MaxSim head (mean over a text's tokens of the best item-token cosine) over 1,000 items x 5,000 texts with
random token features. The evaluator ranks through ``head_block_fn`` (row blocks of texts, each assembled
from item blocks under the default element budget); the baseline calls the head once on all pairs and
ranks the whole matrix. Each runs in its own child process, whose peak resident memory above its state
after the features were made is reported. Both must give identical ranks and the same scores (max abs
difference printed). Target: the evaluator's peak < 1/4 of the straightforward pass's. The memory ratio is
printed last.

    .venv/bin/python bench/head_eval.py [--items 1000 --texts 5000 --tokens 8 --dim 64]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from timing import parse_args
from vlret.evaluate.encode import FeatureTable
from vlret.evaluate.ranking import DEFAULT_CHUNK, rank_blocks, rank_matrix
from vlret.evaluate.scoring import head_block_fn, head_positive_scores
from vlret.models.heads import MaxSimHead


def _features(n: int, tokens: int, dim: int, seed: int) -> FeatureTable:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, tokens)) < 0.8
    mask[:, 0] = True
    embeds = rng.normal(size=(n, dim)).astype(np.float32)
    return FeatureTable(embeds, rng.normal(size=(n, tokens, dim)).astype(np.float32), mask)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _run(kind: str, args: argparse.Namespace, out: str, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    texts = _features(args.texts, args.tokens, args.dim, 0)
    items = _features(args.items, args.tokens, args.dim, 1)
    text_to_item = np.arange(args.texts) % args.items
    head = MaxSimHead()
    before = _peak_mib()
    start = time.perf_counter()
    with torch.no_grad():
        if kind == "evaluator":
            hint = head_positive_scores(head, texts, items, text_to_item)
            block_fn = head_block_fn(head, texts, items, DEFAULT_CHUNK)
            ranks = rank_blocks(block_fn, text_to_item, args.items, DEFAULT_CHUNK, positive_hint=hint)
            peak = _peak_mib() - before
            seconds = time.perf_counter() - start
            scores = torch.cat([block_fn(s, min(s + 512, args.texts)) for s in range(0, args.texts, 512)])
        else:
            scores = head.score(texts.rows(0, args.texts), items.rows(0, args.items))
            ranks = rank_matrix(scores, text_to_item)
            peak = _peak_mib() - before
            seconds = time.perf_counter() - start
    np.savez(out, scores=scores.numpy(), t2i=ranks.t2i, i2t=ranks.i2t)
    queue.put((peak, seconds))


def _child(kind: str, args: argparse.Namespace, out: str) -> tuple[float, float]:
    ctx = mp.get_context("spawn")  # a fresh process: its peak memory is this run's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(kind, args, out, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


#: --smoke: sizes that run in seconds
SMOKE = {"items": 20, "texts": 100, "tokens": 4, "dim": 16}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--tokens", type=int, default=8, help="tokens per text and per item")
    parser.add_argument("--dim", type=int, default=64)
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: str(Path(tmp) / f"{k}.npz") for k in ("straightforward", "evaluator")}
        runs = {k: _child(k, args, paths[k]) for k in paths}
        full, chunked = (np.load(paths[k]) for k in ("straightforward", "evaluator"))
        diff = float(np.abs(full["scores"] - chunked["scores"]).max())
        same_ranks = np.array_equal(full["t2i"], chunked["t2i"]) and np.array_equal(
            full["i2t"], chunked["i2t"]
        )
    print(f"items={args.items} texts={args.texts} tokens={args.tokens} dim={args.dim} head=maxsim")
    for kind, (peak, seconds) in runs.items():
        print(f"{kind}: peak memory above the features {peak:.0f} MiB, {seconds:.2f} s")
    print(f"max abs score difference: {diff:.3g}   identical ranks: {same_ranks}")
    print(
        f"memory ratio (evaluator / straightforward): {runs['evaluator'][0] / runs['straightforward'][0]:.3f}"
    )


if __name__ == "__main__":
    main()
