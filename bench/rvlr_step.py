"""An RVLR stage-2 training step (all seven terms) against a stage-1 step (ITC + 2 x ITM), same batch, one run.

The model is the synthetic CPU recipe's (a 4-block tiny ViT on 64-px images, a bi-GRU, 128-d, a 1-layer ITM
fusion encoder); the batch is random pixels, the benchmark's captions and random teacher features of the
released widths (1,024 / 768). A step is the trainer's: encode the batch, compute the terms, backward, AdamW
step. Distillation adds two linear maps, three B x B relation matrices and two contrastive terms, so the
target is a stage-2 step at most 1.5 times a stage-1 step. Repetitions alternate (A B A B ...), each side
keeps its best; the ratio is printed last.

    .venv/bin/python bench/rvlr_step.py [--batch 64 --repeats 5]
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
from vlret.losses.base import LossContext  # noqa: E402
from vlret.models import create_model  # noqa: E402
from vlret.train.distributed import DistInfo  # noqa: E402
from vlret.train.trainer import WeightedLoss, encode_batch  # noqa: E402

STAGE1 = {"infonce": {"weight": 1.0}, "itm": {"weight": 2.0}}
STAGE2 = {
    **STAGE1,
    "representation_distill": {"weight": 1.0, "iic_weight": 1.0, "ttc_weight": 2.0},
    "structure_distill": {"weight": 1.0, "kd_weight": 2.0, "kdi_weight": 1.0, "kdt_weight": 1.0},
}
WORDS = [
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "left",
    "right",
    "above",
    "below",
    "of",
    "the",
    "small",
    "big",
]


class RandomTeacher:
    """Teacher features of the released widths, fixed per caption id."""

    def __init__(self, pairs: int, dims=(1024, 768)):
        rng = np.random.default_rng(0)
        self.image = torch.from_numpy(rng.standard_normal((pairs, dims[0]), dtype=np.float32))
        self.text = torch.from_numpy(rng.standard_normal((pairs, dims[1]), dtype=np.float32))
        self.dims = dims

    def features(self, caption_ids, device):
        return self.image[caption_ids.cpu()].to(device), self.text[caption_ids.cpu()].to(device)


#: --smoke: sizes that run in seconds
SMOKE = {"batch": 8, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, SMOKE)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(WORDS, 8)) for _ in range(args.batch)]
    model = create_model(
        "composed",
        captions=captions,
        image_tower="tiny-vit",
        image_options={"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "heads": 4},
        text_tower="bigru",
        text_options={"word_dim": 128, "hidden": 128, "min_count": 1},
        embed_dim=128,
        head={"name": "itm", "dim": 128, "layers": 1, "heads": 4},
    ).train()
    batch = {
        "pixels": torch.randn(args.batch, 3, 64, 64),
        "text": model.tokenize(captions),
        "item_ids": torch.arange(args.batch) // 2,  # two captions per image, as a real batch has some
        "caption_ids": torch.arange(args.batch),
    }
    teacher, info, device = RandomTeacher(args.batch), DistInfo(), torch.device("cpu")
    losses = {"stage 1": WeightedLoss.from_recipe(STAGE1), "stage 2": WeightedLoss.from_recipe(STAGE2)}
    optimizers = {}
    for name, loss in losses.items():
        loss.prepare(LossContext(128, teacher.dims), device)
        params = list(model.parameters()) + [p for _, p in loss.named_parameters()]
        optimizers[name] = torch.optim.AdamW(params, lr=1e-5)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads")

    def timed(name: str):
        loss, optimizer = losses[name], optimizers[name]

        def run() -> float:
            start = time.perf_counter()
            outputs = encode_batch(model, batch, info, device, loss.needs, teacher)
            total, _ = loss(outputs, {"epoch": 1})
            total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        return run

    timed("stage 1")()  # warm-up: first calls allocate
    timed("stage 2")()
    times = interleaved({name: timed(name) for name in losses}, args.repeats)
    for name, values in times.items():
        print(spread(name, values, "s"))
    ratio = best(times["stage 2"]) / best(times["stage 1"])
    print(f"stage 2 / stage 1 step time: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
