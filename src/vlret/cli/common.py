"""Options and helpers shared by the command groups."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from vlret.data.formats import FORMATS
from vlret.data.video import MAX_FRAMES

#: how every --model option reads its value (one resolver: vlret.models.create_model)
MODEL_HELP = (
    "a saved vlret model folder, hf:<hub id or folder> (CLIP, SigLIP; a bare transformers folder too), "
    "openclip:<arch>/<tag>, conse (real photos offline, no training), composed[:IMAGE+TEXT], or "
    "tiny-cnn / tiny-vit (fresh)"
)
#: what ``--model`` takes where a trained model is needed (an index, a search)
TRAINED_MODEL_HELP = (
    "conse (real photos, offline, no training), a saved vlret model folder (a training run's "
    "RUN/checkpoints/best/model), hf:<hub id or folder> (CLIP, SigLIP) or openclip:<arch>/<tag>"
)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The options every command that reads a dataset takes."""
    p.add_argument(
        "--format",
        default="auto",
        help=f"{', '.join(FORMATS)}, or auto: detected (the default)",
    )
    p.add_argument(
        "--media-root", help="folder the media paths are relative to (default: beside the annotations)"
    )
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="stop at a bad record, or skip and list it",
    )
    p.add_argument("--path-column", default="image", help="CSV and Parquet: column with the media path")
    p.add_argument("--caption-column", default="caption", help="CSV and Parquet: column with the caption")
    p.add_argument(
        "--split-column", default="split", help="CSV and Parquet: column with the split (optional)"
    )
    p.add_argument(
        "--default-split", default="test", help="CSV and Parquet: split of rows without a split column"
    )
    p.add_argument(
        "--encoding", default="utf-8", help="CSV: text encoding (default UTF-8, with or without BOM)"
    )


def load_data(args: argparse.Namespace):
    """The dataset the data options of ``args`` name."""
    from vlret.data import detect_format, load_dataset

    fmt = detect_format(args.data) if args.format == "auto" else args.format
    options = {}
    if fmt in ("csv", "parquet"):  # one table reader: the same column options for both
        options = {
            "path_column": args.path_column,
            "caption_column": args.caption_column,
            "split_column": args.split_column,
            "default_split": args.default_split,
            "encoding": args.encoding,
        }
    return load_dataset(args.data, fmt, args.media_root, args.on_error, **options)


def load_readable_data(args: argparse.Namespace):
    """:func:`load_data` for commands that read every image: under ``--on-error skip`` the images that
    cannot be read are left out with their captions (and listed), as the records that cannot be parsed are."""
    dataset = load_data(args)
    if args.on_error == "skip":
        from vlret.data.images import check_media

        dataset = check_media(dataset, "skip")
    return dataset


def add_video_option(p: argparse.ArgumentParser) -> None:
    """``--video-frames``, for the commands that encode a dataset with a model."""
    p.add_argument(
        "--video-frames",
        type=frame_count,
        help=f"frames per clip when an image model encodes videos (meanP; 1 to {MAX_FRAMES}, default 8); "
        "a video model keeps its own",
    )


def frame_count(text: str) -> int:
    """``--video-frames``: a whole number from 1 to :data:`MAX_FRAMES` (argparse reports the refusal)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of frames, not {text!r}") from None
    if not 1 <= value <= MAX_FRAMES:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_FRAMES} frames per clip, not {value}")
    return value


def model_for(name: str, dataset, split: str, video_frames: int | None = None):
    """A model by name; a fresh tiny model builds its vocabulary from the training captions (or ``split``'s).
    When the data holds videos, an image model becomes a clip encoder: meanP over ``video_frames`` frames."""
    from vlret.data.video import is_video_path
    from vlret.models import create_model
    from vlret.models.registry import is_model_reference

    if is_model_reference(name):
        model = create_model(name)
    else:
        source = "train" if "train" in dataset.splits else split
        model = create_model(name, captions=[c.text for c in dataset.split(source).captions])
    videos = any(is_video_path(item.path) for item in dataset.items)
    if model.input_kind == "pixels" and (videos or video_frames is not None):
        from vlret.models.video import as_video_model

        model = as_video_model(model, {} if video_frames is None else {"frames": video_frames})
    return model


def parse_shard(text: str | None) -> tuple[int, int]:
    """``--shard i/n`` as ``(i, n)``; ``(0, 1)`` when not given."""
    from vlret.errors import ConfigError

    if not text:
        return (0, 1)
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def vlret_command() -> str:
    """How to run vlret again from this shell: ``vlret`` when that name finds this program, else the path
    of the program that is running (``.venv/bin/vlret`` when the environment is not activated)."""
    program = Path(sys.argv[0])
    if program.name != "vlret":  # python -m vlret.cli, or a test
        return "vlret"
    found = shutil.which("vlret")
    if found and Path(found).resolve() == program.resolve():
        return "vlret"
    relative = os.path.relpath(program.resolve())
    return relative if not relative.startswith("..") else str(program.resolve())


def add_engine_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--engine local|ray``, ``--workers`` and ``--address`` of a command whose shards Ray can run;
    ``what`` says what the driver does once they are done."""
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help=f"ray: run the shards as tasks on a Ray cluster (the ray extra), then {what} here",
    )
    parser.add_argument("--workers", type=int, default=2, help="--engine ray: shards (tasks) to run")
    parser.add_argument(
        "--address", help="--engine ray: an existing cluster (auto, ray://HOST:10001); default: a local one"
    )
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="--engine ray: CPUs each task asks Ray for, and torch's threads in it (results equal a "
        "one-process run on as many threads)",
    )


def check_engine(args: argparse.Namespace) -> None:
    """``--shard`` and ``--engine ray`` exclude each other; a Ray run needs at least one thread per task."""
    from vlret.errors import ConfigError

    if args.engine == "ray" and args.shard:
        raise ConfigError("--shard and --engine ray: Ray runs the shards itself; give one or the other")
    if args.threads_per_worker < 1:
        raise ConfigError(f"--threads-per-worker {args.threads_per_worker}: expected 1 or more")
