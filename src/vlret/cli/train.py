"""``vlret train`` and ``vlret demo``."""

from __future__ import annotations

import argparse
import shlex
import sys

from vlret.cli.common import print_json, vlret_command


def cmd_train(args: argparse.Namespace) -> int:
    from vlret.train import Trainer, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    trainer = Trainer(
        recipe,
        resume=args.resume,
        progress=not args.quiet,
        resume_anyway=args.resume_anyway,
        overwrite=args.overwrite,
    )
    summary = trainer.fit()
    if trainer.info.is_main:  # under torchrun, one summary
        print_json(summary)
        if "stopped" in summary:
            print(
                f"stopped on SIGTERM after step {summary['steps']}, checkpoint saved: run the same command "
                "with --resume to go on",
                file=sys.stderr,
            )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.video:
        return _video_demo(args)
    from vlret.demo import run_demo

    out, data_dir = args.out or "runs/demo", args.data_dir or "data/synth"
    outcome = run_demo(
        out,
        data_dir,
        args.overrides,
        progress=not args.quiet,
        images=args.images,
        overwrite=args.overwrite,
        command=_demo_command(args),
    )
    print()
    print(outcome["table"])
    print()
    for name, path in outcome["results"].items():
        print(f"result ({name}): {path}")
    print(f"report: {outcome['report']}")
    print(f"index of the test images: {outcome['index']}")
    vlret = vlret_command()
    print(f"search it in a browser:   {vlret} serve {outcome['index']}   (then open http://127.0.0.1:8000/)")
    print(f'or from the shell:        {vlret} search {outcome["index"]} "a large red circle"')
    photos = outcome["photos"]
    print()
    print(
        f"Real photos, searched by text with conse (training-free; {photos['photos']} photos, {photos['index']}):"
    )
    for query, hits in photos["queries"].items():
        print(f"  {query!r:20} " + "   ".join(f"{path} {score:.2f}" for path, score in hits))
    return 0


def _demo_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this demo (for the report)."""
    words = [vlret_command(), "demo"]
    for flag, value in (("--out", args.out), ("--data-dir", args.data_dir), ("--images", args.images)):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join([*words, *args.overrides])


def _video_demo(args: argparse.Namespace) -> int:
    from vlret.demo import run_video_demo

    out = args.out or "runs/demo_video"
    data_dir = args.data_dir or "data/synth_video"
    outcome = run_video_demo(
        out, data_dir, args.overrides, progress=not args.quiet, clips=args.images, overwrite=args.overwrite
    )
    print()
    print(outcome["table"])
    print()
    for name, path in outcome["results"].items():
        print(f"result ({name}): {path}")
    print(f"index of the test clips: {outcome['index']}")
    print(
        f"play them in a browser:  {vlret_command()} serve {outcome['index']}   (then open http://127.0.0.1:8000/)"
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("--recipe", help="YAML recipe (default: the built-in defaults)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 optim.lr=1e-4")
    train.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/last")
    train.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume even if the recipe differs from the one the run was started with",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="output_dir holds another run: delete its checkpoints and logs and start afresh",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    demo = commands.add_parser(
        "demo",
        help="synthesise, train the tiny model, evaluate, re-rank, report, then search real photos (22 min "
        "from a fresh clone on 2 cores, set-up included; a cached benchmark and a finished run are reused)",
    )
    demo.add_argument("--out", help="run folder (default runs/demo, runs/demo_video with --video)")
    demo.add_argument(
        "--data-dir", help="where the synthetic benchmark is written (default data/synth, data/synth_video)"
    )
    demo.add_argument(
        "--video",
        action="store_true",
        help="the video demo: clips, meanP and the temporal transformer (~6 min)",
    )
    demo.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.epochs=1")
    demo.add_argument(
        "--images", type=int, help="benchmark size (default: the calibrated 5000; clips with --video: 600)"
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="the run folder holds a training run with another recipe: delete it and train afresh",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
