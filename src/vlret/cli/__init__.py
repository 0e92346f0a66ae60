"""The ``vlret`` command line: one module per command group, each registering its sub-commands.

``vlret data`` (:mod:`.data`), ``eval`` and ``results`` (:mod:`.evaluate`), ``train`` and ``demo``
(:mod:`.train`), ``rerank`` (:mod:`.rerank`), ``index``, ``search`` and ``serve`` (:mod:`.search`),
``backbone`` (:mod:`.features`), ``prompts`` (:mod:`.prompts`), ``bench`` (:mod:`.bench`).
"""

from __future__ import annotations

import argparse
import os
import sys

from vlret.cli import bench, data, evaluate, features, prompts, rerank, search, train
from vlret.errors import VlretError

COMMAND_GROUPS = (data, evaluate, train, rerank, search, features, prompts, bench)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` that shows each option's default (``(default: 8000)``) unless its help already says it,
    or the default is nothing (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, argparse.SUPPRESS)
            or (isinstance(default, (list, tuple)) and not default)
            or "default" in text.lower()
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command's parser the defaults-showing help; an option with a default
    and no help gets a line for it."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
        elif action.help is None and action.option_strings and action.default not in (None, False):
            action.help = "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    from vlret import __version__

    parser = argparse.ArgumentParser(prog="vlret", description="Text-visual retrieval toolkit.")
    parser.add_argument("--version", action="version", version=f"vlret {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' own progress bars (transformers' weight loading); also accepted after the command",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    _show_defaults(parser)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    """Silence the progress bars transformers and the hub draw (``Loading weights``), which would print
    between vlret's own lines on every command, unless ``verbose``."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when they are imported
    if "transformers" in sys.modules:  # imported already (a test, a notebook): tell it directly
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


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
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    _quiet_libraries(verbose)
    args = parse_args(argv)
    try:
        return args.func(args)
    except VlretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
