"""An index build through Ray (``--engine ray``, 2 workers) against the plain one-process build, on the same
cores and the same images, in one run.

The collection is ``--images`` synthetic 64-px pictures encoded by an untrained tiny CNN (what matters is the
engine's overhead, not the model). Each repetition builds a fresh index both ways, interleaved (plain, Ray,
plain, ...); the Ray side includes starting and stopping its local cluster, as a user's command does. The
timed indexes must agree to float noise: Ray's workers run torch on one thread each and the plain build on
all cores, and CPU kernels reduce in a thread-dependent order. After the clock, one more plain build on one
thread (the workers' count) must be byte-equal to the Ray build. Target: overhead ratio (Ray / plain) <= 1.15,
printed last.

``--existing-cluster`` connects to a local cluster started before the clock (as ``ray start --head`` leaves
one running for ``--address auto``), so the Ray side pays for its tasks, not for starting Ray: the
scale-out case, where a cluster serves many builds.

    .venv/bin/python bench/shard_build.py [--images 4000] [--workers 2] [--repeats 2] [--existing-cluster]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from timing import best, interleaved, parse_args, spread
from vlret.data.synth import SynthConfig, write_benchmark
from vlret.index import build_index
from vlret.index.ray_engine import build_with_ray
from vlret.models import create_model

SMOKE = {"images": 40, "workers": 2, "repeats": 1, "chunk_size": 8}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--existing-cluster", action="store_true", help="Ray started before the clock (not by each build)"
    )
    args = parse_args(parser, SMOKE)
    if args.existing_cluster:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)  # build_with_ray uses it and leaves it up
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_benchmark(tmp / "synth", SynthConfig(images=args.images, seed=0))
        images = data.parent / "images"
        model = create_model("tiny-cnn", captions=["a red circle", "a blue square"])
        model.save(tmp / "model")
        built: dict[str, Path] = {}
        engines = {"plain": build_index, "ray": partial(build_with_ray, workers=args.workers)}

        def timed(side: str) -> float:
            """One fresh build through ``side``'s engine; its seconds."""
            start = time.perf_counter()
            out = tmp / f"{side}-{time.perf_counter_ns()}"
            built[side] = engines[side](
                str(tmp / "model"), out, images=images, chunk_size=args.chunk_size, progress=False
            )
            return time.perf_counter() - start

        cluster = "an existing cluster" if args.existing_cluster else "a local cluster started per build"
        print(
            f"{args.images} images, chunks of {args.chunk_size}, {args.workers} Ray workers on {cluster}, "
            f"{torch.get_num_threads()} threads"
        )
        times = interleaved({side: partial(timed, side) for side in engines}, args.repeats)
        for side, values in times.items():
            print(spread(side, values, "s"))
        plain_embeds, ray_embeds = (np.load(built[side] / "embeddings.npy") for side in ("plain", "ray"))
        diff = float(np.abs(plain_embeds - ray_embeds).max())
        print(f"max abs difference of the embeddings: {diff:.1e} (byte-equal: {diff == 0})")
        assert diff < 1e-5, "the Ray build differs from the one-process build beyond float noise"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the Ray workers' count (build_with_ray's threads_per_worker)
        try:
            timed("plain")
        finally:
            torch.set_num_threads(threads)
        same = (built["plain"] / "embeddings.npy").read_bytes() == (
            built["ray"] / "embeddings.npy"
        ).read_bytes()
        print(f"byte-equal to a one-process build on 1 thread: {same}")
        assert same, "the Ray build differs from a one-process build at the workers' thread count"
        print(f"overhead ratio (ray / plain): {best(times['ray']) / best(times['plain']):.2f}")


if __name__ == "__main__":
    main()
