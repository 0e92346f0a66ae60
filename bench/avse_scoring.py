"""AEOM scoring (AVSE's chunk MaxSim) against plain cosine of the same embeddings, in one run.

Random embeddings of COCO 5K's size: 5,000 images x 2 views x 1,024 and 25,000 captions x 1,024. Both sides
score the whole captions x images matrix the way ``vlret eval`` does (:func:`head_block_fn`: row blocks of
captions, each built from item blocks under the CPU memory budget) and keep each row's best score, so both
do the same work around the scores. The cosine side scores the first view only (a 1,024-d dual encoder).
Per pair AEOM does ``P * Q * d = 8 * 4 * 256 = 8,192`` multiply-adds, 8 times a 1,024-d cosine, plus a max
over 8 and a sum over 4; the target is at most 12 times the cosine's time. Repetitions alternate
(A B A B ...), each side keeps its best; the ratio is printed last.

    .venv/bin/python bench/avse_scoring.py [--images 5000 --captions 25000 --dim 1024 --chunk 256 --views 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import best, interleaved, parse_args, spread  # noqa: E402
from vlret.evaluate.encode import FeatureTable  # noqa: E402
from vlret.evaluate.scoring import head_block_fn  # noqa: E402
from vlret.models.heads import AEOMHead, CosineHead  # noqa: E402

ROWS = 1024  # captions per row block, as the evaluator's ranking asks for them


def _unit(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    x = rng.standard_normal((n, width), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_per_row(head, texts: FeatureTable, items: FeatureTable) -> np.ndarray:
    block = head_block_fn(head, texts, items, ROWS)
    out = [block(s, min(s + ROWS, len(texts))).amax(dim=1) for s in range(0, len(texts), ROWS)]
    return torch.cat(out).numpy()


#: --smoke: sizes that run in seconds
SMOKE = {"images": 40, "captions": 200, "dim": 64, "chunk": 16, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_args(parser, SMOKE)

    rng = np.random.default_rng(0)
    views = np.concatenate([_unit(rng, args.images, args.dim) for _ in range(args.views)], axis=1)
    texts = FeatureTable(_unit(rng, args.captions, args.dim))
    items_aeom = FeatureTable(views)
    items_cosine = FeatureTable(np.ascontiguousarray(views[:, : args.dim]))
    aeom, cosine = AEOMHead(chunk_sizes=[args.chunk]).eval(), CosineHead().eval()
    print(
        f"{args.images} images x {args.views} views x {args.dim}, {args.captions} captions, chunk {args.chunk}, "
        f"{torch.get_num_threads()} threads"
    )

    def timed(head, items):
        def run() -> float:
            start = time.perf_counter()
            best_per_row(head, texts, items)
            return time.perf_counter() - start

        return run

    times = interleaved(
        {"cosine": timed(cosine, items_cosine), "aeom": timed(aeom, items_aeom)}, args.repeats
    )
    for name, values in times.items():
        print(spread(name, values, "s"))
    # a check that the two sides compute what they claim: one view with chunk = dim is the cosine
    one_view = FeatureTable(items_cosine.embeds[:50])
    few = FeatureTable(texts.embeds[:50])
    reduced = AEOMHead(chunk_sizes=[args.dim])
    diff = np.abs(best_per_row(reduced, few, one_view) - best_per_row(cosine, few, one_view)).max()
    print(f"one view, chunk = dim vs cosine: max abs difference {diff:.2e}")
    print(f"aeom / cosine time: {best(times['aeom']) / best(times['cosine']):.2f}x (target <= 12x)")


if __name__ == "__main__":
    main()
