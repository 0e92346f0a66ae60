"""``vlret backbone predict``: check that a pretrained tower's weights loaded, on one image."""

from __future__ import annotations

import argparse

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
