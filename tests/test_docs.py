"""The documentation (issue 29, section 2): the site builds strictly and offline, its command-line
reference is the parsers', and the README stays a short front page within the repository."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "vlret") -> list[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    return [c for name, sub in subs[0].choices.items() for c in _leaf_commands(sub, f"{prefix} {name}")]


def test_the_site_builds_strictly_offline_with_every_command_in_its_reference(tmp_path):
    pytest.importorskip("mkdocs")  # in the test extra: CI has it
    site = tmp_path / "site"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    reference = (site / "reference" / "cli" / "index.html").read_text()
    from vlret.cli import build_parser

    commands = _leaf_commands(build_parser())
    assert len(commands) > 20
    for command in commands:
        assert f"<code>{command}</code>" in reference, command
    assert (
        "--video" in reference and "default: <code>0.1</code>" in reference
    )  # demo --video, synth difficulty
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "encode_text" in api and "create_model" in api  # from the docstrings


def test_the_readme_is_short_and_names_nothing_outside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert readme.startswith("# vlret\n\n```bash\nmake demo")  # the two commands first
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        assert "DESIGN.md" not in text and "shared/specs" not in text, page
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)", readme):  # its links to the docs exist
        assert (ROOT / target).is_file(), target


def test_every_method_page_has_the_same_sections_with_a_fidelity_table():
    """One page per method, each in the same order: what the paper does, how to run it here, its recipes,
    the fidelity table against the released code, and its results on the synthetic benchmark."""
    wanted = [
        "## What the paper",
        "## How to run it",
        "## Recipes",
        "## Fidelity to the released code",
        "## Results on the synthetic benchmark",
    ]
    pages = sorted((ROOT / "docs" / "methods").glob("*.md"))
    assert len(pages) == 5
    for page in pages:
        headings = [line for line in page.read_text().splitlines() if line.startswith("## ")]
        found = [next((h for h in headings if h.startswith(w)), None) for w in wanted]
        assert None not in found, (page.name, headings)
        assert [headings.index(h) for h in found] == sorted(headings.index(h) for h in found), page.name
        fidelity = page.read_text().split("## Fidelity to the released code", 1)[1]
        assert "| point | paper / intent | released code | vlret default |" in fidelity, page.name
