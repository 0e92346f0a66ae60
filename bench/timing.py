"""Timing on a shared, noisy machine: baseline and candidate repetitions interleaved (A B A B ...).

Another process that starts or stops half-way through moves a sequential "all of A, then all of B"
measurement by any amount; interleaved, it slows both sides alike. Each side keeps its best repetition (the
one least disturbed), and the spread of the repetitions is printed so that a noisy run is visible.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def interleaved(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each side once per round, in turn; each call returns one measurement (seconds or a rate)."""
    values: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            values[name].append(run())
    return values


def best(values: list[float], higher_is_better: bool = False) -> float:
    return max(values) if higher_is_better else min(values)


def spread(
    name: str, values: list[float], unit: str, higher_is_better: bool = False, scale: float = 1.0
) -> str:
    """``name: best X unit (all: a .. b, n runs)``."""
    shown = [v * scale for v in values]
    top = max(shown) if higher_is_better else min(shown)
    return f"{name}: best {top:.3f} {unit} (runs {min(shown):.3f} .. {max(shown):.3f}, n={len(shown)})"


def parse_args(parser: argparse.ArgumentParser, smoke: dict) -> argparse.Namespace:
    """The command line, with ``--smoke``: the sizes in ``smoke`` replace the defaults (flags given still
    win), so the whole benchmark runs in seconds. A test runs every benchmark so, to catch one that an API
    change broke; its numbers mean nothing."""
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds: check that the benchmark runs at all"
    )
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args()
    return args
