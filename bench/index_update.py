"""An index update against a fresh full build of the same changed collection, in one run.

A collection of ``--images`` 64-px pictures is indexed by an untrained tiny CNN (the cheapest encoder, so
the update's fixed costs - listing and stat-ing every file, copying the kept rows, writing the records -
weigh the most). Then 1% of the files are added, 0.5% removed and 0.5% edited in place. Each repetition
restores the index as it was before the change and times, interleaved: the update (``build_index`` over
the existing index), then a full build of the changed collection into a new folder. Both must answer 100
queries (embeddings of random items) with the same ids and, to float noise, the same scores. Target:
update / full build <= 0.05, printed last.

    .venv/bin/python bench/index_update.py [--images 20000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from timing import best, interleaved, parse_args, spread
from vlret.index import Searcher, build_index
from vlret.models import create_model

SMOKE = {"images": 200, "repeats": 1, "chunk_size": 64}


def _picture(rng: np.random.Generator, path: Path) -> None:
    """A blocky random picture (JPEG-friendly: 8 x 8 cells of colour, scaled up)."""
    cells = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(cells).resize((64, 64), Image.NEAREST).save(path, quality=90)


def _change(images: Path, n: int, rng: np.random.Generator) -> dict[str, int]:
    """Add 1%, remove 0.5% and edit 0.5% of the ``n`` files; returns the counts."""
    names = sorted(p.name for p in images.iterdir())
    counts = {"added": max(1, n // 100), "removed": max(1, n // 200), "edited": max(1, n // 200)}
    picked = rng.choice(len(names), counts["removed"] + counts["edited"], replace=False)
    for k in picked[: counts["removed"]]:
        (images / names[k]).unlink()
    for k in picked[counts["removed"] :]:
        _picture(rng, images / names[k])
    for k in range(counts["added"]):
        _picture(rng, images / f"new-{k:06d}.jpg")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parse_args(parser, SMOKE)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        for k in range(args.images):
            _picture(rng, images / f"{k:06d}.jpg")
        create_model("tiny-cnn", captions=["a red circle", "a blue square"], seed=0).save(tmp / "model")
        model = str(tmp / "model")
        build = partial(build_index, model, images=images, chunk_size=args.chunk_size, progress=False)
        start = time.perf_counter()
        build(tmp / "before" / "idx")
        first = time.perf_counter() - start
        counts = _change(images, args.images, rng)
        print(
            f"{args.images} images, first build {first:.1f} s; then {counts['added']} added, {counts['removed']} "
            f"removed, {counts['edited']} edited; {torch.get_num_threads()} threads"
        )
        built: dict[str, Path] = {}

        def update() -> float:
            """Restore the index as it was before the change (not timed), then update it."""
            shutil.rmtree(tmp / "updated", ignore_errors=True)
            shutil.copytree(tmp / "before", tmp / "updated", symlinks=True)
            start = time.perf_counter()
            built["update"] = build(tmp / "updated" / "idx")
            return time.perf_counter() - start

        def full() -> float:
            shutil.rmtree(tmp / "full", ignore_errors=True)
            start = time.perf_counter()
            built["full"] = build(tmp / "full" / "idx")
            return time.perf_counter() - start

        times = interleaved({"update": update, "full build": full}, args.repeats)
        for side, values in times.items():
            print(spread(side, values, "s"))
        updated, fresh = Searcher(built["update"]), Searcher(built["full"])
        assert len(updated.items) == len(fresh.items) == args.images + counts["added"] - counts["removed"]
        vectors = np.load(fresh.path / "embeddings.npy", mmap_mode="r")
        worst, same = 0.0, 0
        for row in np.random.default_rng(1).choice(len(vectors), 100, replace=False):
            a, b = (
                updated.image_hits(np.array(vectors[row]), 10),
                fresh.image_hits(np.array(vectors[row]), 10),
            )
            same += [h.id for h in a] == [h.id for h in b]
            worst = max(worst, float(np.abs(np.array([h.score for h in a]) - [h.score for h in b]).max()))
        print(
            f"100 queries: {same} with the same ids in the same order; largest score difference {worst:.1e}"
        )
        assert same == 100 and worst < 1e-5, "the updated index answers otherwise than a fresh build"
        print(f"update / full build: {best(times['update']) / best(times['full build']):.3f}")


if __name__ == "__main__":
    main()
