"""``vlret backbone predict`` (check that a pretrained tower's weights loaded), ``vlret features regions``
(write precomp region features from images) and ``vlret features teacher`` (RVLR's per-pair teacher features)."""

from __future__ import annotations

import argparse

from vlret.cli.common import add_data_options, load_readable_data
from vlret.errors import ConfigError

CLASSIFIERS = ("efficientnet-lite0",)


def cmd_backbone_predict(args: argparse.Namespace) -> int:
    import torch

    from vlret.data.image_files import load_image
    from vlret.models.backbones.efficientnet_lite import TRANSFORM, load_pretrained
    from vlret.models.conse import imagenet_classes

    if args.backbone not in CLASSIFIERS:
        raise ConfigError(f"backbone {args.backbone!r} has no classifier; expected one of {CLASSIFIERS}")
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, not {args.top}")
    net = load_pretrained()
    pixels = torch.from_numpy(TRANSFORM(load_image(args.image, "the image")))[None]
    with torch.no_grad():
        probabilities = net(pixels).softmax(-1)[0]
    values, indices = probabilities.topk(min(args.top, len(probabilities)))
    names = imagenet_classes()
    print("rank  class  name                           probability")
    for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), start=1):
        print(f"{rank:>4}  {i:>5}  {names[i]:<30} {p:.4f}")
    return 0


def cmd_features_regions(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlret.models.region_features import RegionSettings, write_region_features

    settings = RegionSettings(
        boxes=args.boxes,
        grid=args.grid,
        regions=args.regions,
        backbone=args.backbone,
        input_size=args.input_size,
        chunk_size=args.chunk_size,
    )
    dataset = load_readable_data(args)
    scenes = args.scenes
    if settings.boxes == "scene" and scenes is None:
        beside = Path(args.data if Path(args.data).is_dir() else Path(args.data).parent) / "scenes.json"
        scenes = beside if beside.is_file() else None  # the synthetic benchmark keeps it beside its data
    written = write_region_features(dataset, args.out, settings, scenes, args.split)
    print(
        f"{args.out}: {', '.join(written['splits'])} with {written['regions']} regions per image "
        f"({settings.boxes} boxes, {settings.backbone} at {settings.input_size} px); read it with --data {args.out}"
    )
    return 0


def cmd_features_teacher(args: argparse.Namespace) -> int:
    from vlret.train.teacher import TeacherTowers, write_teacher_features

    if args.chunk_size < 1 or args.batch_size < 1:
        raise ConfigError("--chunk-size and --batch-size must be at least 1")
    dataset = load_readable_data(args)
    try:
        split = dataset.split(args.split)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    towers = TeacherTowers(args.image_tower, args.text_tower, batch_size=args.batch_size)
    meta = write_teacher_features(split, args.split, args.out, towers, args.chunk_size, progress=True)
    print(
        f"{args.out}: {meta['pairs']} pairs of {args.split!r}, image {meta['dims'][0]}-d "
        f"({args.image_tower}), text {meta['dims'][1]}-d ({args.text_tower}); "
        f"train with teacher.cache={args.out}"
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    backbone = commands.add_parser("backbone", help="inspect pretrained towers")
    backbone_cmds = backbone.add_subparsers(dest="backbone_command", required=True)
    predict = backbone_cmds.add_parser(
        "predict", help="ImageNet top classes of an image (checks that the weights loaded)"
    )
    predict.add_argument("backbone", help=f"one of {', '.join(CLASSIFIERS)}")
    predict.add_argument("image", help="image file")
    predict.add_argument("--top", type=int, default=5)
    predict.set_defaults(func=cmd_backbone_predict)

    features = commands.add_parser("features", help="write features of a dataset (precomp region features)")
    features_cmds = features.add_subparsers(dest="features_command", required=True)
    regions = features_cmds.add_parser(
        "regions",
        help="crop boxes of each image, encode each with a pretrained CNN, write the precomp layout",
    )
    regions.add_argument("--data", required=True, help="annotation file or folder (images)")
    regions.add_argument(
        "--out", required=True, help="precomp folder to write ({split}_ims.npy, _caps.txt, ...)"
    )
    regions.add_argument(
        "--boxes", choices=["grid", "scene"], default="grid", help="grid cells, or a scene's objects"
    )
    regions.add_argument(
        "--scenes", help="with --boxes scene: the scene file (default: scenes.json beside --data)"
    )
    regions.add_argument("--grid", type=int, default=3, help="with --boxes grid: n x n cells (default 3)")
    regions.add_argument(
        "--regions",
        type=int,
        help="regions per image (default: 1 + grid^2, or 1 + the most objects in a scene)",
    )
    regions.add_argument("--backbone", default="efficientnet-lite0", choices=["efficientnet-lite0"])
    regions.add_argument(
        "--input-size", type=int, default=224, help="crops are resized to this square (default 224)"
    )
    regions.add_argument("--chunk-size", type=int, default=256, help="images per resumable chunk")
    regions.add_argument("--split", action="append", help="only this split (repeatable; default all)")
    add_data_options(regions)
    regions.set_defaults(func=cmd_features_regions)

    from vlret.models.backbones import IMAGE_TOWERS, TEXT_TOWERS

    teacher = features_cmds.add_parser(
        "teacher",
        help="frozen unimodal teachers' features of every training pair (RVLR), in resumable chunks",
    )
    teacher.add_argument("--data", required=True, help="annotation file or folder")
    teacher.add_argument("--out", required=True, help="folder for {split}_image_embed_regu.npy and _text_")
    teacher.add_argument("--split", default="train", help="the training split (default train)")
    teacher.add_argument("--image-tower", default="efficientnet-lite0", choices=list(IMAGE_TOWERS))
    teacher.add_argument("--text-tower", default="minilm", choices=list(TEXT_TOWERS))
    teacher.add_argument("--chunk-size", type=int, default=1024, help="pairs per resumable chunk")
    teacher.add_argument("--batch-size", type=int, default=64)
    add_data_options(teacher)
    teacher.set_defaults(func=cmd_features_teacher)
