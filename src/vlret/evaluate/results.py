"""The one result schema every evaluation writes, and the markdown table that aggregates results."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import vlret

SCHEMA = "vlret.result/1"
TABLE_COLUMNS = [
    ("t2i_r1", "T→I R@1"),
    ("t2i_r5", "R@5"),
    ("t2i_r10", "R@10"),
    ("i2t_r1", "I→T R@1"),
    ("i2t_r5", "R@5"),
    ("i2t_r10", "R@10"),
    ("rsum", "rsum"),
]


def git_revision() -> str | None:
    """The commit vlret runs from, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(vlret.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_result(**fields) -> dict:
    """A result dict with the schema, version, revision and time stamp filled in."""
    return {
        "schema": SCHEMA,
        **fields,
        "vlret_version": vlret.__version__,
        "git_revision": git_revision(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _cell(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "–"
    value = metrics[key] * 100
    return f"{value:.1f}"


def results_table(results: list[dict], names: list[str] | None = None) -> str:
    """A markdown table of recalls (in %) and rsum, one row per result."""
    header = "| run | protocol | " + " | ".join(label for _, label in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for n, result in enumerate(results):
        metrics = result.get("metrics", {})
        name = names[n] if names else result.get("model", {}).get("name", f"run {n}")
        protocol = result.get("protocol", {}).get("name", "?")
        cells = [_cell(metrics, key) for key, _ in TABLE_COLUMNS]
        lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_result(path: str | Path) -> dict:
    from vlret.data._io import read_json
    from vlret.errors import DataError

    result = read_json(path)
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise DataError(path, None, f'not a vlret result file (expected "schema": "{SCHEMA}")')
    return result
