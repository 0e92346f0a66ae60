"""``vlret prompts train | eval``: learnt prompts (CoOp, CoOp + TextRefiner) on class data, base-to-new."""

from __future__ import annotations

import argparse


def _class_data(args: argparse.Namespace):
    from pathlib import Path

    from vlret.data.classes import read_class_folders, read_split_zhou

    data = Path(args.data)
    if data.is_dir():
        return read_class_folders(data)
    return read_split_zhou(data, args.images or data.parent / "images")


def cmd_prompts_train(args: argparse.Namespace) -> int:
    from vlret.cli.common import print_json
    from vlret.models.prompt_classifier import RefinerConfig
    from vlret.train.prompt_trainer import PromptRun, train_prompts

    run = PromptRun(
        model=args.model,
        method=args.method,
        subset=args.subset,
        shots=args.shots,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        select=args.select,
        refiner=RefinerConfig(alpha=args.alpha),
    )
    print_json(train_prompts(run, _class_data(args), args.out, progress=True))
    return 0


def cmd_prompts_eval(args: argparse.Namespace) -> int:
    from vlret.data._io import write_json
    from vlret.errors import ConfigError
    from vlret.evaluate.results import make_result
    from vlret.train.prompt_trainer import evaluate_base_to_new, zero_shot

    if (args.prompts is None) == (args.zero_shot is None):
        raise ConfigError("name a prompts folder, or --zero-shot MODEL for the hand-written prompt")
    source = zero_shot(args.zero_shot) if args.zero_shot else args.prompts
    metrics = evaluate_base_to_new(source, _class_data(args), args.split)
    result = make_result(
        task="classification",
        data={"source": args.data, "split": args.split},
        protocol={"name": "base-to-new"},
        model={
            "name": "zero-shot" if args.zero_shot else "prompts",
            "prompts": args.prompts,
            "model": args.zero_shot,
        },
        classification=metrics,
        metrics={},
    )
    if args.out:
        write_json(args.out, result)
    print(f"base {metrics['base_acc']:.2f}  new {metrics['new_acc']:.2f}  HM {metrics['hm']:.2f}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    prompts = commands.add_parser("prompts", help="learn prompts for classification (CoOp, TextRefiner)")
    cmds = prompts.add_subparsers(dest="prompts_command", required=True)
    train = cmds.add_parser("train", help="few-shot prompt learning on the base (or all) classes")
    train.add_argument("--data", required=True, help="split_zhou_<Name>.json, or a folder of class folders")
    train.add_argument("--images", help="the folder a split file's paths are relative to (default: images/)")
    train.add_argument("--model", required=True, help="a saved vlret model whose text tower takes embeddings")
    train.add_argument("--method", choices=["coop", "textrefiner"], default="textrefiner")
    train.add_argument("--subset", choices=["base", "all"], default="base")
    train.add_argument("--shots", type=int, default=16)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=0.002)
    train.add_argument("--alpha", type=float, default=0.2, help="TextRefiner's aggregation weight")
    train.add_argument("--select", choices=["best_val", "last"], default="best_val")
    train.add_argument("--out", required=True, help="run folder (a killed run resumes from it)")
    train.set_defaults(func=cmd_prompts_train)
    ev = cmds.add_parser("eval", help="accuracy on the base and new classes and their harmonic mean")
    ev.add_argument("prompts", nargs="?", help="a run's prompts folder (RUN/prompts)")
    ev.add_argument("--zero-shot", metavar="MODEL", help="instead: MODEL with 'a photo of a <class>.'")
    ev.add_argument("--data", required=True)
    ev.add_argument("--images")
    ev.add_argument("--split", default="test")
    ev.add_argument("--out", help="write the result JSON here")
    ev.set_defaults(func=cmd_prompts_eval)
