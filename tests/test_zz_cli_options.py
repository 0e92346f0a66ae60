"""Every option of every command is used by a test that runs the command line (issue 34, section 2).

The suite's `vlret` runs (``main([...])`` and ``vlret`` processes) are recorded by ``conftest.py``; this
module's name sorts last, so it checks them after every other test has run. Run alone, or with a
selection, it has nothing to check and says so."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vlret.cli import build_parser

#: options no test needs to give, and why
EXEMPT = {
    "--help": "argparse's own",
}
#: options of one command not yet given by a test of it (issue 34: each is to be given a test, then removed)
NOT_YET: dict[str, str] = {}  # options known to lack a command-line test, each with why


def leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf command's parser by its words (``("index", "build")``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    found = {}
    for name, sub in subs[0].choices.items():
        found.update(leaf_parsers(sub, (*path, name)))
    return found


def options_used(argv: list[str], leaves: dict) -> tuple[tuple[str, ...], set[str]] | None:
    """The leaf command an argument list runs, and the options it gives (by their long names, as argparse
    matches them: whole, or an unambiguous prefix); None when it names no command."""
    words = tuple(w for w in argv if not w.startswith("-"))
    command = next(
        (path for path in sorted(leaves, key=len, reverse=True) if words[: len(path)] == path), None
    )
    if command is None:
        return None
    parser = leaves[command]
    used = set()
    for word in argv:
        if not word.startswith("-") or word == "-":
            continue
        name = word.split("=", 1)[0]
        matches = [o for o in parser._option_string_actions if o == name] or [
            o for o in parser._option_string_actions if o.startswith(name) and name.startswith("--")
        ]
        if len(matches) == 1:
            action = parser._option_string_actions[matches[0]]
            used.add(max(action.option_strings, key=len))
    return command, used


def _whole_suite_ran(config) -> bool:
    """pytest was given the tests folder (or nothing: its testpaths) and no selection."""
    tests = Path(__file__).parent.resolve()
    whole = all(Path(arg).resolve() == tests for arg in config.args)
    option = config.option
    # `lf` is the cache plugin's option: absent under -p no:cacheprovider
    return whole and not (option.keyword or getattr(option, "lf", False) or option.deselect)


def test_every_option_of_every_command_is_given_by_a_test(request, cli_calls):
    if not _whole_suite_ran(request.config):
        pytest.skip("checks the runs of the whole suite: run `make test` (or pytest on all of tests/)")
    leaves = leaf_parsers(build_parser())
    given: dict[tuple[str, ...], set[str]] = {path: set() for path in leaves}
    for argv in cli_calls:
        found = options_used(argv, leaves)
        if found:
            given[found[0]] |= found[1]
    missing = []
    for path, parser in sorted(leaves.items()):
        for action in parser._actions:
            if not action.option_strings:
                continue
            name = max(action.option_strings, key=len)
            command = f"vlret {' '.join(path)} {name}"
            if name not in given[path] and name not in EXEMPT and command not in NOT_YET:
                missing.append(command)
    assert not missing, "options no test gives on a command line:\n" + "\n".join(missing)


def test_the_reader_of_argument_lists_finds_commands_and_options():
    leaves = leaf_parsers(build_parser())
    assert options_used(["index", "build", "--model", "m", "--out=x", "--images", "i"], leaves) == (
        ("index", "build"),
        {"--model", "--out", "--images"},
    )
    assert options_used(["search", "idx", "a query", "-k", "5"], leaves) == (("search",), {"-k"})
    assert options_used(["eval", "--mod", "m"], leaves) == (("eval",), {"--model"})  # a prefix argparse takes
    assert options_used(["--version"], leaves) is None
