"""``vlret bench``: every method and their combinations in one table (see :mod:`vlret.suite`)."""

from __future__ import annotations

import argparse

from vlret.suite.rows import FAMILIES


def cmd_bench(args: argparse.Namespace) -> int:
    from vlret.suite.run import SuiteSettings, run_suite

    settings = SuiteSettings(
        suite=args.suite,
        families=args.methods,
        seeds=args.seeds,
        images=args.images,
        budget_minutes=args.budget_minutes,
        steps=args.steps,
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
        description="Run each method's CPU recipe on the synthetic benchmark with the same data and seeds, "
        "re-rank every first stage with RVLR's ITM head and with VISA, and write table.md, summary.json and "
        "index.html (the table, R@1 against query cost, bar charts). A killed run continues where it stopped.",
    )
    bench.add_argument("--suite", default="synthetic", help="the suite to run (synthetic)")
    bench.add_argument(
        "--methods",
        nargs="+",
        default=list(FAMILIES),
        choices=FAMILIES,
        metavar="METHOD",
        help=f"families of rows to run (default all: {' '.join(FAMILIES)}); itm and visa add re-ranking rows",
    )
    bench.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default 0)")
    bench.add_argument("--budget-minutes", type=float, help="pick epochs so that the whole suite fits")
    bench.add_argument(
        "--steps", type=int, help="stop every training cell after this many steps (smoke runs)"
    )
    bench.add_argument("--images", type=int, help="synthetic benchmark size (default: the demo's 5,000)")
    bench.add_argument("--data-dir", type=Path, default=Path("data"), help="where the suite's data is cached")
    bench.add_argument("--out", type=Path, required=True, help="the suite's folder (cells, table, page)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)
