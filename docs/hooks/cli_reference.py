"""MkDocs hook: the command-line reference, written from vlret's own parsers at build time."""

from __future__ import annotations

import argparse

MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    """``(full command, parser)`` for every leaf command under ``parser``, in the order they were added."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix, parser
        return
    for name, sub in actions[0].choices.items():
        yield from _subcommands(sub, f"{prefix} {name}")


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def cli_markdown() -> str:
    from vlret.cli import build_parser

    root = build_parser()
    parts = []
    for command, parser in _subcommands(root, "vlret"):
        words = command.split()
        parent = root
        for word in words[1:-1]:
            parent = next(a for a in parent._actions if isinstance(a, argparse._SubParsersAction)).choices[
                word
            ]
        summary = _help_of(parent, words[-1])
        usage = parser.format_usage().removeprefix("usage: ").strip()
        parts.append(f"## `{command}`\n\n{summary}\n\n```text\n{usage}\n```\n")
        rows = []
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.dest}`"
            default = action.default
            shown = (
                ""
                if default in (None, False, argparse.SUPPRESS) or isinstance(default, list) and not default
                else f" (default: `{default}`)"
            )
            text = (action.help or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {flags} | {text}{shown} |")
        if rows:
            parts.append("| option | meaning |\n|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_markdown())
    return markdown
