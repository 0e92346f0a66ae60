"""Video encoding throughput: decode + sample + encode clips from their files, against encoding the same
frames already in memory, in one run.

Clips are written first, MSR-VTT-like by default: 320 x 240, 30 fps, 10 s, H.264 with x264's defaults
(a keyframe every 250 frames, CRF 23, B-frames), a textured gradient panning across the frame, which
comes out at about 200 kbit/s (MSR-VTT's clips average a few hundred). ``--fresh-noise --crf 12 --b-frames
0`` gives the worst case instead: new noise in every frame, kept near-losslessly, about 6 Mbit/s. The model is a video model (meanP over
``--frames`` uniform frames) on an image tower: the composed EfficientNet-Lite0 + MiniLM by default, which
installs offline. The candidate is the evaluation's encoder, ``encode_images``: it reads each batch of clips
through ``visual_inputs`` (PyAV decoding, no frame cache) on a background thread while the previous batch
is encoded; the baseline encodes the same pixel arrays, decoded beforehand.
Repetitions alternate (A B A B ...), each side keeps its best; the ratio of frames per second is printed
last (target >= 0.8: decoding must not dominate).

    .venv/bin/python bench/video_throughput.py [--clips 32 --frames 8 --model composed --repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import best, interleaved, parse_args, spread  # noqa: E402
from vlret.data.images import visual_inputs  # noqa: E402
from vlret.data.records import Caption, Item, RetrievalDataset  # noqa: E402
from vlret.data.video import write_video  # noqa: E402
from vlret.evaluate.encode import encode_images  # noqa: E402
from vlret.models import create_model  # noqa: E402


def write_clips(folder: Path, count: int, args: argparse.Namespace) -> RetrievalDataset:
    """``count`` clips of a gradient with a noise texture, both panning (compressible, as real footage
    is), or with fresh noise in every frame (``args.fresh_noise``: incompressible)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:240, 0:320]
    items = []
    for n in range(count):
        base = rng.integers(0, 255, size=3)
        texture = rng.integers(0, 24, size=(240, 640, 1))
        frames = []
        for f in range(int(args.seconds * args.fps)):
            shift = (3 * f + 17 * n) % 320
            pixels = ((xs + shift) % 320)[..., None] * 0.6 + ys[..., None] * 0.3 + base
            if args.fresh_noise:
                noise = rng.integers(0, 24, size=(240, 320, 1))
            else:
                noise = texture[:, shift : shift + 320]
            frames.append((pixels % 256 + noise).clip(0, 255).astype(np.uint8))
        write_video(
            folder / f"{n:03d}.mp4",
            frames,
            fps=args.fps,
            keyframe_every=args.keyframe_every,
            crf=args.crf,
            b_frames=args.b_frames,
        )
        items.append(Item(str(n), f"{n:03d}.mp4", "test"))
    return RetrievalDataset(items, [Caption("a clip", it.id) for it in items], folder)


#: --smoke: sizes that run in seconds
SMOKE = {"model": "tiny-cnn", "clips": 2, "seconds": 1.0, "fps": 4, "frames": 2, "batch": 2, "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="composed", help="composed (EfficientNet-Lite0), tiny-cnn, or a folder"
    )
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--keyframe-every", type=int, default=250, help="frames between keyframes (x264: 250)"
    )
    parser.add_argument("--crf", type=int, default=23, help="x264 quality (lower: more bits; default 23)")
    parser.add_argument("--b-frames", type=int, default=3, help="x264 B-frames (default 3)")
    parser.add_argument("--fresh-noise", action="store_true", help="new noise in every frame (worst case)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--batch", type=int, default=8, help="clips per encoder call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, SMOKE)

    os.environ["VLRET_FRAME_CACHE"] = "0"  # the candidate decodes every time
    torch.manual_seed(0)
    # no memo of the frozen tower's outputs: both sides must encode every repetition
    options = {"memo_size": 0} if args.model == "composed" else {}
    model = create_model(args.model, captions=["a clip"], video={"frames": args.frames}, **options).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_clips(Path(tmp), args.clips, args)
        kbits = (
            sum(p.stat().st_size for p in Path(tmp).glob("*.mp4")) * 8 / 1000 / (args.clips * args.seconds)
        )
        batches = [range(s, min(s + args.batch, args.clips)) for s in range(0, args.clips, args.batch)]
        decoded = [torch.from_numpy(visual_inputs(model, data, b)) for b in batches]
        frames = args.clips * args.frames
        size = tuple(decoded[0].shape[-2:])
        print(
            f"{model.name}: {args.clips} clips of {args.seconds:g} s at {args.fps} fps (320 x 240, keyframe every "
            f"{args.keyframe_every}, CRF {args.crf}, {args.b_frames} B-frames, {kbits:.0f} kbit/s), "
            f"{args.frames} frames each at {size} px, {torch.get_num_threads()} threads"
        )

        def from_files() -> float:  # the evaluation's own path: the next batch decoded while one encodes
            start = time.perf_counter()
            encode_images(model, data, batch_size=args.batch, progress=False)
            return frames / (time.perf_counter() - start)

        def in_memory() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for pixels in decoded:
                    model.encode_images(pixels)
            return frames / (time.perf_counter() - start)

        in_memory()  # warm-up
        rates = interleaved(
            {"frames in memory": in_memory, "decode + sample + encode": from_files}, args.repeats
        )
    for name, values in rates.items():
        print(spread(name, values, "frames/s", higher_is_better=True))
    ratio = best(rates["decode + sample + encode"], True) / best(rates["frames in memory"], True)
    print(f"decode + encode / encode throughput: {ratio:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
