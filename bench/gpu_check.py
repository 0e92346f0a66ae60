"""The checks a GPU machine answers and a CPU cannot: run it whenever a GPU is lent, and put its figures in the
README with the date.

1. Image encoding throughput of a ViT-B/32-sized CLIP vision tower (random weights, bf16, 224 px), and the
   model-FLOPs utilisation it implies against the chip's dense bf16 peak (a table of known chips).
2. SGR and SAF evaluation at the spec's sizes (1,000 images x 5,000 captions, embed 1,024, sim 256, 36
   regions): vlret's batched heads against the released code's per-caption loop, interleaved (A B A B);
   the scores must agree (max abs difference < 1e-5) and the target speed-up is >= 20x.
3. Every AMP path finite: two training steps and the validation of the tiny model and of an SGR model (a
   composed tiny ViT + bi-GRU) under fp16 and under bf16 autocast.
4. Training without the image cache on the GPU (``train_speed.py --no-cache-images``: ``data.num_workers:
   auto`` gives loader processes there), against batches in memory (target >= 0.85): the case where the
   model outruns one decoding thread, which a CPU cannot show.

On a machine without a GPU it says so and exits 0; ``--smoke`` runs the same code on tiny sizes (on the CPU
when there is no GPU), which is what the test suite does.

    .venv/bin/python bench/gpu_check.py            # on a GPU machine
    .venv/bin/python bench/gpu_check.py --smoke    # anywhere, seconds
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sgraf_eval import add_size_options, compare_head, sgraf_inputs  # noqa: E402
from timing import best, interleaved, parse_args, spread  # noqa: E402

#: dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a name fragment of torch.cuda.get_device_name
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def vit_flops_per_image(image: int, patch: int, width: int, layers: int, mlp_ratio: int = 4) -> float:
    """Forward multiply-adds x 2 of a ViT: patch embedding, then per block the q/k/v/out projections,
    the attention products and the MLP (layer norms and softmax are negligible)."""
    patches = (image // patch) ** 2
    tokens = patches + 1
    embed = 2 * patches * (3 * patch * patch) * width
    projections = 2 * tokens * 4 * width * width
    attention = 2 * 2 * tokens * tokens * width
    mlp = 2 * tokens * 2 * mlp_ratio * width * width
    return embed + layers * (projections + attention + mlp)


def encoding_check(args, device: torch.device) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.width // 64 if args.width >= 64 else 1,
        image_size=args.image,
        patch_size=args.patch,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = CLIPVisionModel(config).to(device, dtype).eval()
    pixels = torch.randn(args.batch, 3, args.image, args.image, device=device, dtype=dtype)

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(args.steps):
                model(pixel_values=pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * args.batch / (time.perf_counter() - start)

    run()  # warm-up: kernels chosen, memory allocated
    rates = interleaved({"encode": run}, args.repeats)["encode"]
    rate = best(rates, higher_is_better=True)
    print(spread("image encoding", rates, "img/s", higher_is_better=True))
    flops = vit_flops_per_image(args.image, args.patch, args.width, args.layers)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((p for key, p in BF16_PEAKS.items() if key in name), None)
    mfu = (
        f"{100 * rate * flops / peak:.1f}% of {name}'s dense bf16 peak"
        if peak
        else f"no peak known for {name}"
    )
    return f"ViT {args.image}/{args.patch} x{args.layers} ({flops / 1e9:.2f} GFLOP/img): {rate:.0f} img/s, MFU {mfu}"


def sgraf_check(args, device: torch.device) -> list[str]:
    inputs = sgraf_inputs(args, device)
    lines = []
    for name in ("sgr", "saf"):
        diff, speedup = compare_head(name, args, inputs, device)
        assert diff < 1e-5, f"{name}: the scores differ by {diff}"
        lines.append(f"{name.upper()} speed-up {speedup:.1f}x (max abs diff {diff:.1e})")
    return lines


def pipeline_check(args) -> str:
    """``train_speed.py --no-cache-images`` in its own process (the device its recipe picks: the GPU)."""
    script = Path(__file__).resolve().parent / "train_speed.py"
    command = [sys.executable, str(script), "--no-cache-images"] + (["--smoke"] if args.smoke else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    return f"training without the image cache: {lines[0]}; {lines[-1]} of batches in memory"


def amp_check(device: torch.device) -> str:
    """Two training steps and an evaluation under each autocast dtype: every loss and metric finite."""
    from vlret.data.synth import SynthConfig, write_benchmark
    from vlret.train import Trainer, load_recipe

    families = {
        "tiny": ["model.options={width: 16, embed_dim: 16}"],
        "sgr": [
            "model.name=composed",
            "model.options={image_tower: tiny-vit, text_tower: bigru, embed_dim: 32, image_options: "
            "{image_size: 32, patch_size: 8, width: 32, layers: 1, heads: 2}, text_projection: linear}",
            "model.head={name: sgr, embed_dim: 32, sim_dim: 16, n_regions: 17}",
            "losses={hinge: {margin: 0.2, max_violation: true}}",
        ],
    }
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        data = write_benchmark(Path(tmp) / "synth", SynthConfig(images=40, seed=1))
        for amp in ("fp16", "bf16"):
            for family, overrides in families.items():
                recipe = load_recipe(
                    None,
                    [
                        f"data.path={data}",
                        f"output_dir={Path(tmp) / f'{family}-{amp}'}",
                        "train.max_steps=2",
                        "train.batch_size=8",
                        f"train.amp={amp}",
                        f"train.device={device.type}",
                        *overrides,
                    ],
                )
                summary = Trainer(recipe, progress=False).fit()
                assert math.isfinite(summary["best_metric"]), (family, amp, summary)
                checked += 1
    return (
        f"AMP: {checked} runs (fp16, bf16 x {', '.join(families)}) trained and evaluated, every metric finite"
    )


#: --smoke: sizes that run in seconds on a CPU
SMOKE = {
    "image": 32,
    "patch": 8,
    "width": 32,
    "layers": 1,
    "batch": 4,
    "steps": 1,
    "images": 4,
    "captions": 20,
    "embed_dim": 32,
    "sim_dim": 16,
    "regions": 6,
    "rows": 8,
    "repeats": 1,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="batches per timed repetition")
    add_size_options(parser, rows=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_args(parser, SMOKE)
    if not torch.cuda.is_available():
        if not args.smoke:
            print("no GPU: nothing to check here (run with --smoke to exercise the code on the CPU)")
            print("gpu check: 0 checks (no GPU)")
            return 0
        device = torch.device("cpu")
    else:
        device = torch.device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"
    print(f"device: {name}; torch {torch.__version__}")
    lines = [
        encoding_check(args, device),
        *sgraf_check(args, device),
        amp_check(device),
        pipeline_check(args),
    ]
    for line in lines:
        print(line)
    print(f"gpu check ({name}): {len(lines)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
