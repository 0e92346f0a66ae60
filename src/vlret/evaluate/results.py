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


#: video retrieval columns: both directions with median and mean rank, as text-video papers report them
VIDEO_COLUMNS = [
    ("t2i_r1", "T→V R@1", 100.0),
    ("t2i_r5", "R@5", 100.0),
    ("t2i_r10", "R@10", 100.0),
    ("t2i_medr", "MdR", 1.0),
    ("t2i_meanr", "MnR", 1.0),
    ("i2t_r1", "V→T R@1", 100.0),
    ("i2t_r5", "R@5", 100.0),
    ("i2t_r10", "R@10", 100.0),
    ("i2t_medr", "MdR", 1.0),
    ("i2t_meanr", "MnR", 1.0),
]


#: NDCG@10 columns, shown when some result has graded metrics (``--relevance``); values are already in %
NDCG_COLUMNS = [
    ("single_modal", "i2i_ndcg@10", "I→I NDCG@10"),
    ("single_modal", "t2t_ndcg@10", "T→T NDCG@10"),
    ("mixed", "i2it_ndcg@10", "I→IT NDCG@10"),
    ("mixed", "t2it_ndcg@10", "T→IT NDCG@10"),
]


#: classification columns (``vlret prompts eval``), shown when some result has them; values already in %
CLASSIFICATION_COLUMNS = [
    ("base_acc", "base"),
    ("new_acc", "new"),
    ("hm", "HM"),
    ("acc", "accuracy"),
    ("base_map", "base mAP"),
    ("new_map", "new mAP"),
    ("map", "class→image mAP"),
]


def _cell(metrics: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in metrics:
        return "–"
    value = metrics[key] * scale
    return f"{value:.{digits}f}"


def _name(result: dict, names: list[str] | None, n: int) -> str:
    return names[n] if names else result.get("model", {}).get("name", f"run {n}")


def _protocol_cell(result: dict) -> str:
    """The protocol's name, and its tie rule when it is not the default (``flickr30k-1k, ties released``):
    two results under other tie rules are not the same figures."""
    protocol = result.get("protocol", {})
    ties = protocol.get("ties", {}).get("rule", "pessimistic")
    name = protocol.get("name", "?")
    return name if ties == "pessimistic" else f"{name}, ties {ties}"


def results_table(results: list[dict], names: list[str] | None = None) -> str:
    """A markdown table of recalls (in %) and rsum, one row per result; NDCG@10 columns are added when
    some result has single-modal or mixed metrics. Video results (every item a clip) get a table of their
    own with median and mean ranks, and classification results (``task: classification``) another, after
    the retrieval one, with the columns some result has."""
    named = [(_name(r, names, n), r) for n, r in enumerate(results)]
    retrieval, video, classification = ([row for row in named if _kind(row[1]) == k] for k in _KINDS)
    tables = []
    if retrieval or not (classification or video):
        tables.append(_retrieval_table(retrieval))
    if video:
        tables.append(_video_table(video))
    if classification:
        tables.append(_classification_table(classification))
    return "\n\n".join(tables)


_KINDS = ("retrieval", "video", "classification")


def _kind(result: dict) -> str:
    if result.get("task") == "classification":
        return "classification"
    return "video" if result.get("data", {}).get("media") == "video" else "retrieval"


def _video_table(rows: list[tuple[str, dict]]) -> str:
    header = "| run | protocol | " + " | ".join(label for _, label, _ in VIDEO_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(VIDEO_COLUMNS) + 2)]
    for name, result in rows:
        metrics = result.get("metrics", {})
        protocol = _protocol_cell(result)
        cells = [_cell(metrics, key, scale) for key, _, scale in VIDEO_COLUMNS]
        lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _retrieval_table(rows: list[tuple[str, dict]]) -> str:
    graded = [c for c in NDCG_COLUMNS if any(c[0] in r for _, r in rows)]
    labels = [label for _, label in TABLE_COLUMNS] + [label for _, _, label in graded]
    header = "| run | protocol | " + " | ".join(labels) + " |"
    lines = [header, "|" + "---|" * (len(labels) + 2)]
    for name, result in rows:
        metrics = result.get("metrics", {})
        protocol = _protocol_cell(result)
        cells = [_cell(metrics, key) for key, _ in TABLE_COLUMNS]
        cells += [_cell(result.get(section, {}), key, 1.0) for section, key, _ in graded]
        lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _classification_table(rows: list[tuple[str, dict]]) -> str:
    columns = [c for c in CLASSIFICATION_COLUMNS if any(c[0] in r.get("classification", {}) for _, r in rows)]
    header = "| run | protocol | " + " | ".join(label for _, label in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name, result in rows:
        metrics = result.get("classification", {})
        protocol = _protocol_cell(result)
        cells = [_cell(metrics, key, 1.0, 2) for key, _ in columns]  # the papers' two decimals
        lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_result(path: str | Path) -> dict:
    from vlret.data._io import read_json
    from vlret.errors import DataError

    result = read_json(path)
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise DataError(path, None, f'not a vlret result file (expected "schema": "{SCHEMA}")')
    return result
