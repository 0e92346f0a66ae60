"""SGR and SAF evaluation: vlret's batched, masked heads against a per-caption loop, in one run.

Random region features (images x regions x embed_dim) and random word features for captions of COCO-like
lengths (8 to 16 tokens, ``<start>`` and ``<end>`` included), fixed head weights, eval mode. The baseline is
the released code's shape (``tests/sgraf_reference.py``): one caption at a time, sliced to its length,
repeated over all images. vlret scores the matrix the way ``vlret eval`` does: row blocks of captions, each
built from item blocks under the default memory budget. Repetitions alternate (A B A B ...), each side keeps
its best, and the max abs difference of the two matrices (must be < 1e-5) and the speed-up (target >= 20x)
are printed last, per head.

The spec's sizes (1,000 images x 5,000 captions, embed 1,024, sim 256, 36 regions) take hours on a 2-core
CPU for the loop; ``--images/--captions/--embed-dim/--sim-dim`` shrink them:

    .venv/bin/python bench/sgraf_eval.py [--images 1000 --captions 5000 --embed-dim 1024 --sim-dim 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sgraf_reference import reference_scores  # noqa: E402
from timing import best, interleaved, parse_args, spread  # noqa: E402
from vlret.evaluate.encode import FeatureTable  # noqa: E402
from vlret.evaluate.scoring import head_block_fn  # noqa: E402
from vlret.models.heads import SAFHead, SGRHead  # noqa: E402


def sgraf_inputs(
    args, device: torch.device
) -> tuple[FeatureTable, FeatureTable, list[torch.Tensor], torch.Tensor]:
    """Random captions (8 to 16 words) and regions: vlret's feature tables, and the per-caption tensors and
    region tensor the loop reads (on ``device``)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 17, size=args.captions)
    width = int(lengths.max())
    words = rng.normal(size=(args.captions, width, args.embed_dim)).astype(np.float32)
    mask = np.arange(width)[None] < lengths[:, None]
    words *= mask[..., None]
    regions = rng.normal(size=(args.images, args.regions, args.embed_dim)).astype(np.float32)
    texts = FeatureTable(words.mean(1), words, mask)
    items = FeatureTable(regions.mean(1), regions, np.ones(regions.shape[:2], dtype=bool))
    per_caption = [torch.from_numpy(w[: int(n)]).to(device) for w, n in zip(words, lengths, strict=True)]
    return texts, items, per_caption, torch.from_numpy(regions).to(device)


def _vlret(head, texts: FeatureTable, items: FeatureTable, rows: int) -> torch.Tensor:
    block = head_block_fn(head, texts, items, rows)
    return torch.cat([block(s, min(s + rows, len(texts))) for s in range(0, len(texts), rows)])


def compare_head(name: str, args, inputs, device: torch.device) -> tuple[float, float]:
    """Time one head both ways (interleaved) on ``device``; (max abs difference, speed-up)."""
    texts, items, per_caption, regions = inputs
    options = {"embed_dim": args.embed_dim, "sim_dim": args.sim_dim, "n_regions": args.regions}
    torch.manual_seed(0)
    head = (SGRHead if name == "sgr" else SAFHead)(**options).to(device).eval()
    results: dict[str, torch.Tensor] = {}

    def timed(side: str, run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            results[side] = run().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    sides = {
        "per-caption loop": lambda: timed("loop", lambda: reference_scores(head, per_caption, regions).T),
        "vlret": lambda: timed("vlret", lambda: _vlret(head, texts, items, args.rows)),
    }
    times = interleaved(sides, args.repeats)
    for side, values in times.items():
        print(f"{name} {spread(side, values, 's')}")
    diff = float((results["loop"] - results["vlret"]).abs().max())
    return diff, best(times["per-caption loop"]) / best(times["vlret"])


def add_size_options(parser: argparse.ArgumentParser, rows: int) -> None:
    """The sizes of the comparison; the defaults are the spec's (COCO 1K-sized)."""
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--embed-dim", type=int, default=1024)
    parser.add_argument("--sim-dim", type=int, default=256)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--rows", type=int, default=rows, help="captions per row block (vlret)")


#: --smoke: sizes that run in seconds
SMOKE = {"images": 4, "captions": 20, "embed_dim": 32, "sim_dim": 16, "regions": 6, "rows": 8, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_options(parser, rows=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--heads", nargs="+", default=["sgr", "saf"], choices=["sgr", "saf"])
    args = parse_args(parser, SMOKE)
    inputs = sgraf_inputs(args, torch.device("cpu"))
    print(
        f"{args.images} images x {args.captions} captions, embed {args.embed_dim}, sim {args.sim_dim}, "
        f"{args.regions} regions, {torch.get_num_threads()} threads"
    )
    lines = []
    for name in args.heads:
        diff, speedup = compare_head(name, args, inputs, torch.device("cpu"))
        lines.append(f"{name}: max abs difference {diff:.2e}; speed-up {speedup:.1f}x")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
