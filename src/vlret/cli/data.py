"""``vlret data stats | convert | synth | synth-classes | synth-video``: read, check, convert and synthesise datasets."""

from __future__ import annotations

import argparse
import sys

from vlret.cli.common import add_data_options, load_data, print_json


def cmd_stats(args: argparse.Namespace) -> int:
    from vlret.data.images import check_media

    dataset = load_data(args)
    if args.check_media:
        dataset = check_media(dataset, args.on_error)
    stats = dataset.stats()
    stats["skipped_records"] = [s.as_dict() for s in dataset.skipped]
    if args.json:
        print_json(stats)
        return 0
    print(stats_table(stats))
    for s in dataset.skipped:
        print(f"skipped {s.file} {s.record}: {s.reason}", file=sys.stderr)
    return 0


def stats_table(stats: dict) -> str:
    """``vlret data stats`` as a reader sees it: the source, then one row per split."""
    lines = [f"{stats['source']} ({stats['format']})", ""]
    lines.append("| split | items | captions | captions per item | words per caption |")
    lines.append("|---|---:|---:|---|---:|")
    for name, split in stats["splits"].items():
        spread = ", ".join(f"{n}: {count}" for n, count in split["captions_per_item"].items())
        lines.append(
            f"| {name} | {split['items']:,} | {split['captions']:,} | {spread} | {split['mean_caption_words']} |"
        )
    if stats["skipped"]:
        lines += ["", f"{stats['skipped']} records skipped (listed below; --json lists them too)"]
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> int:
    from vlret.data import write_karpathy

    dataset = load_data(args)
    write_karpathy(dataset, args.out)
    print(f"wrote {len(dataset.items)} items, {len(dataset.captions)} captions to {args.out}")
    for s in dataset.skipped:
        print(f"skipped {s.file} {s.record}: {s.reason}", file=sys.stderr)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vlret.data.synth import SynthConfig, write_benchmark

    cfg = SynthConfig(images=args.images, seed=args.seed, size=args.size, difficulty=args.difficulty)
    print(write_benchmark(args.out, cfg, force=args.force))
    return 0


def cmd_synth_classes(args: argparse.Namespace) -> int:
    from vlret.data.synth_classes import ClassBenchConfig, write_class_benchmark

    counts = {"train": args.train, "val": args.val, "test": args.test}
    print(write_class_benchmark(args.out, ClassBenchConfig(per_class=counts, seed=args.seed)))
    return 0


def cmd_synth_video(args: argparse.Namespace) -> int:
    from vlret.data.synth_video import VideoSynthConfig, write_video_benchmark

    cfg = VideoSynthConfig(clips=args.clips, seed=args.seed)
    print(write_video_benchmark(args.out, cfg, force=args.force))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from vlret.data.synth import SynthConfig
    from vlret.data.synth_classes import ClassBenchConfig

    data = commands.add_parser("data", help="read, check, convert and synthesise datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    stats = data_cmds.add_parser("stats", help="counts per split; --check-media opens every image")
    stats.add_argument("data", help="annotation file or folder")
    stats.add_argument(
        "--check-media", action="store_true", help="open every media file and report unreadable ones"
    )
    stats.add_argument("--json", action="store_true", help="the counts as JSON, for scripts")
    add_data_options(stats)
    stats.set_defaults(func=cmd_stats)

    convert = data_cmds.add_parser("convert", help="convert any supported format to Karpathy JSON")
    convert.add_argument("data", help="annotation file or folder")
    convert.add_argument("--out", required=True, help="output Karpathy JSON file")
    add_data_options(convert)
    convert.set_defaults(func=cmd_convert)

    synth = data_cmds.add_parser("synth", help="write the synthetic benchmark (images + Karpathy JSON)")
    synth.add_argument("--out", required=True, help="output folder")
    d = SynthConfig()
    synth.add_argument("--images", type=int, default=d.images, help=f"number of images (default {d.images})")
    synth.add_argument("--seed", type=int, default=d.seed)
    synth.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    synth.add_argument(
        "--difficulty", type=float, default=d.difficulty, help=f"0 (easy) .. 1 (hard), default {d.difficulty}"
    )
    synth.add_argument(
        "--force", action="store_true", help="rewrite even if the folder holds the same benchmark"
    )
    synth.set_defaults(func=cmd_synth)

    classes = data_cmds.add_parser(
        "synth-classes", help="write the synthetic class benchmark (colour x shape, CoOp's split layout)"
    )
    classes.add_argument("--out", required=True, help="output folder")
    counts = ClassBenchConfig().counts()
    for split, count in counts.items():
        classes.add_argument(
            f"--{split}", type=int, default=count, help=f"images per class (default {count})"
        )
    classes.add_argument("--seed", type=int, default=0)
    classes.set_defaults(func=cmd_synth_classes)

    video = data_cmds.add_parser(
        "synth-video", help="write the synthetic video benchmark (moving, appearing, disappearing shapes)"
    )
    video.add_argument("--out", required=True, help="output folder")
    video.add_argument("--clips", type=int, default=600, help="number of clips (default 600)")
    video.add_argument("--seed", type=int, default=0)
    video.add_argument("--force", action="store_true", help="rewrite even if the folder holds the same clips")
    video.set_defaults(func=cmd_synth_video)
