"""``vlret prompts train | eval``: learnt prompts (CoOp, CoOp + TextRefiner) on class data, base-to-new,
cross-dataset and domain generalisation."""

from __future__ import annotations

import argparse

from vlret.cli.common import MODEL_HELP

# Flags of `prompts train` that set a recipe field of the same name (None: keep the recipe's value).
RUN_FLAGS = (
    "data",
    "images",
    "classnames",
    "model",
    "method",
    "subset",
    "shots",
    "seed",
    "epochs",
    "batch_size",
    "lr",
    "select",
)


def _class_data(data: str, images: str | None, classnames: str | None = None):
    """Class data from a split file, a folder of class folders, or FGVC-Aircraft's data folder."""
    from pathlib import Path

    from vlret.data.classes import read_class_folders, read_fgvc_aircraft, read_split_zhou
    from vlret.errors import ConfigError

    if not data:
        raise ConfigError("name the class data: --data split_zhou_<Name>.json or a folder of class folders")
    path = Path(data)
    if path.is_dir() and (path / "variants.txt").is_file():
        return read_fgvc_aircraft(path)
    if path.is_dir():
        return read_class_folders(path, classnames)
    return read_split_zhou(path, images or path.parent / "images")


def _run_from_args(args: argparse.Namespace):
    from vlret.train.prompt_trainer import load_prompt_recipe

    settings = {flag: getattr(args, flag) for flag in RUN_FLAGS if getattr(args, flag) is not None}
    if args.alpha is not None:
        settings["refiner.alpha"] = args.alpha
    return load_prompt_recipe(args.recipe, args.overrides, settings)


def cmd_prompts_train(args: argparse.Namespace) -> int:
    from vlret.cli.common import print_json
    from vlret.train.prompt_trainer import train_prompts

    run = _run_from_args(args)
    print_json(train_prompts(run, _class_data(run.data, run.images, run.classnames), args.out, progress=True))
    return 0


def cmd_prompts_eval(args: argparse.Namespace) -> int:
    from vlret.data._io import write_json
    from vlret.errors import ConfigError
    from vlret.evaluate.results import make_result
    from vlret.train.prompt_trainer import evaluate_all_classes, evaluate_base_to_new, zero_shot

    if (args.prompts is None) == (args.zero_shot is None):
        raise ConfigError("name a prompts folder, or --zero-shot MODEL for the hand-written prompt")
    source = zero_shot(args.zero_shot, args.template) if args.zero_shot else args.prompts
    data = _class_data(args.data, args.images, args.classnames)
    if args.protocol == "base-to-new":
        metrics = evaluate_base_to_new(source, data, args.split)
        line = f"base {metrics['base_acc']:.2f}  new {metrics['new_acc']:.2f}  HM {metrics['hm']:.2f}"
    else:
        metrics = evaluate_all_classes(source, data, args.split)
        line = f"accuracy {metrics['acc']:.2f}  class-to-image mAP {metrics['map']:.2f}"
    result = make_result(
        task="classification",
        data={"source": args.data, "split": args.split, "classes": len(data.classnames)},
        protocol={"name": args.protocol},
        model={
            "name": "zero-shot" if args.zero_shot else "prompts",
            "prompts": args.prompts,
            "model": args.zero_shot,
            "template": args.template if args.zero_shot else None,  # the prompt the zero-shot row read
        },
        classification=metrics,
        metrics={},
    )
    if args.out:
        write_json(args.out, result)
    print(line)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    prompts = commands.add_parser("prompts", help="learn prompts for classification (CoOp, TextRefiner)")
    cmds = prompts.add_subparsers(dest="prompts_command", required=True)
    train = cmds.add_parser(
        "train",
        help="few-shot prompt learning on the base (or all) classes",
        description="Settings come from --recipe (default textrefiner_b2n), then key=value overrides, "
        "then the flags below.",
    )
    train.add_argument(
        "overrides", nargs="*", help="recipe overrides, e.g. refiner.cache_size=10 hflip=false"
    )
    train.add_argument("--recipe", default="textrefiner_b2n", help="a prompt recipe file or built-in name")
    train.add_argument("--data", help="split_zhou_<Name>.json, or a folder of class folders")
    train.add_argument("--images", help="the folder a split file's paths are relative to (default: images/)")
    train.add_argument("--classnames", help="classnames.txt naming id-named class folders (ImageNet)")
    train.add_argument("--model", help=MODEL_HELP + "; its text tower must take input embeddings")
    train.add_argument("--method", choices=["coop", "textrefiner"])
    train.add_argument("--subset", choices=["base", "all"], help="base: base-to-new; all: cross-dataset")
    train.add_argument("--shots", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--alpha", type=float, help="TextRefiner's aggregation weight (refiner.alpha)")
    train.add_argument("--select", choices=["best_val", "last"])
    train.add_argument("--out", required=True, help="run folder (a killed run resumes from it)")
    train.set_defaults(func=cmd_prompts_train)
    ev = cmds.add_parser("eval", help="accuracy (and class-to-image mAP) of learnt or hand-written prompts")
    ev.add_argument("prompts", nargs="?", help="a run's prompts folder (RUN/prompts)")
    ev.add_argument(
        "--zero-shot",
        metavar="MODEL",
        help="instead: MODEL with the hand-written --template (" + MODEL_HELP + ")",
    )
    ev.add_argument("--template", default="a photo of a", help="zero-shot prompt before the class name")
    ev.add_argument("--data", required=True, help="split_zhou_<Name>.json, or a folder of class folders")
    ev.add_argument("--images", help="the folder a split file's paths are relative to (default: images/)")
    ev.add_argument(
        "--classnames", help="classnames.txt naming id-named class folders (ImageNet and variants)"
    )
    ev.add_argument("--split", default="test")
    ev.add_argument(
        "--protocol",
        choices=["base-to-new", "all-classes"],
        default="base-to-new",
        help="all-classes: every class of --data by its own names (cross-dataset, domain generalisation)",
    )
    ev.add_argument("--out", help="write the result JSON here")
    ev.set_defaults(func=cmd_prompts_eval)
