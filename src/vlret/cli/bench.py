"""``vlret bench``: every method and their combinations in one table (see :mod:`vlret.suite`)."""

from __future__ import annotations

import argparse

from vlret.suite.rows import FAMILIES, RECIPE_SETS


def cmd_bench(args: argparse.Namespace) -> int:
    from vlret.suite.run import SuiteSettings, run_suite

    settings = SuiteSettings(
        suite=args.suite,
        families=args.methods,
        seeds=args.seeds,
        images=args.images,
        budget_minutes=args.budget_minutes,
        steps=args.steps,
        format=args.format,
        media_root=args.media_root,
        recipes=args.recipes,
        test_split=args.test_split,
        visa_config=args.visa_config,
        weights=args.weights,
        sets=args.set,
    )
    summary = run_suite(settings, args.out, args.data_dir, progress=not args.quiet)
    print((args.out / "table.md").read_text(encoding="utf-8"))
    print(
        f"{len(summary['rows'])} rows; page: {args.out / 'index.html'}; summary: {args.out / 'summary.json'}"
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from pathlib import Path

    bench = commands.add_parser(
        "bench",
        help="run every method (and combinations) on the same data and seeds: one table, one page",
        description="Run each method's CPU recipe on the synthetic benchmark (or the papers' real-data "
        "recipes on your dataset) with the same data and seeds, re-rank every first stage with RVLR's ITM head "
        "and with VISA, and write table.md, summary.json and index.html (the table, R@1 against query cost, "
        "bar charts). A killed run continues where it stopped.",
    )
    bench.add_argument(
        "--suite",
        default="synthetic",
        help="'synthetic', or a dataset: a Karpathy JSON, LAVIS folder, CSV or precomp folder",
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        choices=FAMILIES,
        metavar="METHOD",
        help=f"families of rows to run (default: all the data can run of {' '.join(FAMILIES)}); itm and "
        "visa add re-ranking rows",
    )
    bench.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default 0)")
    bench.add_argument("--budget-minutes", type=float, help="pick epochs so that the whole suite fits")
    bench.add_argument(
        "--steps", type=int, help="stop every training cell after this many steps (smoke runs)"
    )
    bench.add_argument("--images", type=int, help="synthetic benchmark size (default: the demo's 5,000)")
    data = bench.add_argument_group("a dataset suite (--suite PATH)")
    data.add_argument("--format", default="auto", help="the dataset's format (default: detected)")
    data.add_argument("--media-root", help="the folder the dataset's image paths are relative to")
    data.add_argument(
        "--recipes",
        default="f30k",
        choices=RECIPE_SETS,
        help="the papers' recipes for Flickr30K or for COCO (default f30k)",
    )
    data.add_argument("--test-split", default="test", help="the split every row is scored on (default test)")
    data.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="HUB_ID=FOLDER",
        help="load a recipe's hub weights (e.g. bert-base-uncased) from a local folder",
    )
    bench.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="set KEY in every recipe that has it (e.g. train.batch_size=64)",
    )
    bench.add_argument(
        "--visa-config", help="VISA's backends (YAML; needed on a dataset, default offline on synthetic)"
    )
    bench.add_argument("--data-dir", type=Path, default=Path("data"), help="where the suite's data is cached")
    bench.add_argument("--out", type=Path, required=True, help="the suite's folder (cells, table, page)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)
