"""The ``vlret`` command line: one module per command group, each registering its sub-commands.

``vlret data`` (:mod:`.data`), ``eval`` and ``results`` (:mod:`.evaluate`), ``train`` and ``demo``
(:mod:`.train`), ``rerank`` (:mod:`.rerank`), ``index``, ``search`` and ``serve`` (:mod:`.search`),
``backbone`` (:mod:`.features`), ``prompts`` (:mod:`.prompts`), ``bench`` (:mod:`.bench`).
"""

from __future__ import annotations

import argparse
import sys

from vlret.cli import bench, data, evaluate, features, prompts, rerank, search, train
from vlret.errors import VlretError

COMMAND_GROUPS = (data, evaluate, train, rerank, search, features, prompts, bench)


def build_parser() -> argparse.ArgumentParser:
    from vlret import __version__

    parser = argparse.ArgumentParser(prog="vlret", description="Text-visual retrieval toolkit.")
    parser.add_argument("--version", action="version", version=f"vlret {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def _is_override(token: str) -> bool:
    key = token.split("=", 1)[0]
    return "=" in token and bool(key) and all(part.isidentifier() for part in key.split("."))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides are accepted wherever they appear."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and all(_is_override(t) for t in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except VlretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
