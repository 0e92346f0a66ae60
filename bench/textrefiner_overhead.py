"""Inference throughput of CoOp + TextRefiner against CoOp: same frozen model, same images, one run.

TextRefiner refines the class embeddings with its frozen cache, which depends on no image, so the refined
embeddings are computed once per class list and an image costs what it costs CoOp: the image encoder and
one dot product per class (the paper's "no inference overhead"). Both sides classify the same batches of
random images among the same classes; each timed repetition includes the class side (once) and every image
batch. Repetitions alternate (A B A B ...), each keeps its best; the ratio of images per second is printed
last (target >= 0.97).

    .venv/bin/python bench/textrefiner_overhead.py [--model tiny-vit --images 2048 --classes 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import best, interleaved, parse_args, spread  # noqa: E402
from vlret.models import create_model  # noqa: E402
from vlret.models.prompt_classifier import PromptClassifier, RefinerConfig  # noqa: E402

WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "circle",
    "square",
    "triangle",
    "diamond",
    "small",
    "large",
]


#: --smoke: sizes that run in seconds
SMOKE = {"images": 32, "classes": 8, "batch": 16, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="tiny-vit, or a saved model folder")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, SMOKE)

    torch.manual_seed(0)
    classes = [f"{WORDS[i % 6]} {WORDS[6 + i % 4]} {i}" for i in range(args.classes)]
    model = create_model(args.model, captions=[f"a photo of a {c}." for c in classes] + WORDS).eval()
    coop = PromptClassifier(model, classes).eval()
    refiner = PromptClassifier(model, classes, refiner=RefinerConfig(alpha=0.2)).eval()
    with torch.no_grad():
        refiner.prompts.ctx.copy_(coop.prompts.ctx)
    size = model.image_transform.crop
    batches = [torch.randn(args.batch, 3, size, size) for _ in range(args.images // args.batch)]
    print(
        f"{args.model}: {len(batches) * args.batch} images of {size} px, {args.classes} classes, "
        f"{torch.get_num_threads()} threads"
    )

    def timed(classifier: PromptClassifier):
        def run() -> float:
            classifier.eval()  # drops the class side computed before: each repetition pays it once
            start = time.perf_counter()
            with torch.no_grad():
                for pixels in batches:
                    classifier.logits(pixels)
            return len(batches) * args.batch / (time.perf_counter() - start)

        return run

    timed(coop)()  # warm-up
    rates = interleaved({"CoOp": timed(coop), "CoOp + TextRefiner": timed(refiner)}, args.repeats)
    for name, values in rates.items():
        print(spread(name, values, "images/s", higher_is_better=True))
    ratio = best(rates["CoOp + TextRefiner"], True) / best(rates["CoOp"], True)
    print(f"TextRefiner / CoOp throughput: {ratio:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
