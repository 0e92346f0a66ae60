"""Training throughput of the tiny dual encoder through the real data pipeline, against the same training
steps on batches already in memory, in one run. Target: ratio >= 0.85 (the pipeline must not starve the model).

Both sides run ``Trainer.train_step`` (forward, loss, backward, clip, AdamW); only where the batches come from
differs: a list in memory, or the trainer's own loader (``epoch_loader`` with the workers
``data.num_workers`` gives: ``auto`` is the background prefetch thread when the images are cached or the
model trains on the CPU, and half the cores when an accelerator trains on images decoded at every step). Rounds are interleaved (memory, pipeline, memory, ...) and the best
round of each is kept (see timing.py). The ratio is printed last.

    .venv/bin/python bench/train_speed.py [--steps 8] [--repeats 3] [--no-cache-images]

``--loader-only`` leaves the model out: the batches the loader delivers per second with ``--num-workers``
processes (a number), against the prefetch thread alone. That is what a model faster than one decoding
thread (a GPU) waits on; the ratio is how much the workers add, bounded by the cores they get.

    .venv/bin/python bench/train_speed.py --loader-only --num-workers 2 --no-cache-images
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from timing import best, interleaved, parse_args, spread
from vlret.data.prefetch import prefetch
from vlret.data.synth import SynthConfig, write_benchmark
from vlret.errors import ConfigError
from vlret.train import Trainer, load_recipe
from vlret.train.data import EpochBatches, epoch_loader, loader_workers

#: --smoke: sizes that run in seconds
SMOKE = {"steps": 2, "repeats": 1, "images": 40, "batch_size": 8}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", default="auto", help="auto, or a number of loader processes")
    parser.add_argument(
        "--no-cache-images", action="store_true", help="decode every image from disk each step"
    )
    parser.add_argument(
        "--loader-only", action="store_true", help="no model: the loader's workers against the thread"
    )
    args = parse_args(parser, SMOKE)
    if args.loader_only and not (args.num_workers.isdigit() and int(args.num_workers) >= 1):
        parser.error("--loader-only compares --num-workers processes with the thread: give a number from 1")

    with tempfile.TemporaryDirectory() as tmp:
        data = write_benchmark(Path(tmp) / "synth", SynthConfig(images=args.images, seed=0))
        try:
            recipe = load_recipe("demo_tiny", [
                f"data.path={data}",
                f"output_dir={Path(tmp) / 'run'}",
                f"train.batch_size={args.batch_size}",
                f"data.cache_images={str(not args.no_cache_images).lower()}",
                f"data.num_workers={args.num_workers}",
            ])  # fmt: skip
        except ConfigError as exc:  # --num-workers or --batch-size out of range: one line, not a traceback
            parser.error(str(exc).rsplit("): ", 1)[-1])
        trainer = Trainer(recipe, progress=False)
        workers = loader_workers(recipe.data.num_workers, trainer.source, trainer.device.type)
        batches = EpochBatches(trainer.source, trainer.model.tokenize, args.batch_size, 0, 0, trainer.info)
        steps = min(args.steps, len(batches))
        if args.loader_only:
            rates = interleaved(
                {"thread": loader_rate(batches, 0, steps), "workers": loader_rate(batches, workers, steps)},
                args.repeats,
            )
            print(f"cache_images={not args.no_cache_images} batch={args.batch_size} steps per round={steps}")
            print(spread("prefetch thread", rates["thread"], "samples/s", higher_is_better=True))
            print(spread(f"{workers} worker processes", rates["workers"], "samples/s", higher_is_better=True))
            print(f"ratio: {best(rates['workers'], True) / best(rates['thread'], True):.2f}")
            return
        in_memory = [batches[j] for j in range(steps)]
        trainer.train_step([in_memory[0]], 0)  # warm-up

        def from_memory() -> float:
            start = time.perf_counter()
            for batch in in_memory:
                trainer.train_step([batch], 0)
            return steps * args.batch_size / (time.perf_counter() - start)

        def through_pipeline() -> float:
            start = time.perf_counter()
            loader = iter(epoch_loader(batches, workers))
            loader = prefetch(loader) if workers == 0 else loader
            for batch in itertools.islice(loader, steps):
                trainer.train_step([batch], 0)
            return steps * args.batch_size / (time.perf_counter() - start)

        rates = interleaved({"memory": from_memory, "pipeline": through_pipeline}, args.repeats)

    print(
        f"cache_images={not args.no_cache_images} num_workers={args.num_workers} ({workers}) "
        f"batch={args.batch_size} "
        f"steps per round={steps}"
    )
    print(spread("batches in memory", rates["memory"], "samples/s", higher_is_better=True))
    print(spread("through the data pipeline", rates["pipeline"], "samples/s", higher_is_better=True))
    print(f"ratio: {best(rates['pipeline'], True) / best(rates['memory'], True):.2f}")


def loader_rate(batches: EpochBatches, workers: int, steps: int):
    """A round that takes ``steps`` batches from the loader (the prefetch thread when ``workers`` is 0)."""

    def run() -> float:
        start = time.perf_counter()
        loader = iter(epoch_loader(batches, workers))
        loader = prefetch(loader) if workers == 0 else loader
        taken = sum(len(batch["pixels"]) for batch in itertools.islice(loader, steps))
        return taken / (time.perf_counter() - start)

    return run


if __name__ == "__main__":
    main()
