"""``vlret backbone predict`` (check that a pretrained tower's weights loaded) and ``vlret features regions``
(write precomp region features from images)."""

from __future__ import annotations

import argparse

from vlret.cli.common import add_data_options, load_data
from vlret.errors import ConfigError

CLASSIFIERS = ("efficientnet-lite0",)


def cmd_backbone_predict(args: argparse.Namespace) -> int:
    import torch

    from vlret.data.images import load_image
    from vlret.models.backbones.efficientnet_lite import TRANSFORM, load_pretrained

    if args.backbone not in CLASSIFIERS:
        raise ConfigError(f"backbone {args.backbone!r} has no classifier; expected one of {CLASSIFIERS}")
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, not {args.top}")
    net = load_pretrained()
    pixels = torch.from_numpy(TRANSFORM(load_image(args.image, "the image")))[None]
    with torch.no_grad():
        probabilities = net(pixels).softmax(-1)[0]
    values, indices = probabilities.topk(min(args.top, len(probabilities)))
    print("rank  ImageNet class  probability")
    for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), start=1):
        print(f"{rank:>4}  {i:>14}  {p:.4f}")
    return 0


def cmd_features_regions(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlret.data.region_features import RegionSettings, write_region_features

    settings = RegionSettings(
        boxes=args.boxes,
        grid=args.grid,
        regions=args.regions,
        backbone=args.backbone,
        input_size=args.input_size,
        chunk_size=args.chunk_size,
    )
    dataset = load_data(args)
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
