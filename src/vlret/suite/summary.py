"""Aggregating a suite's cell records: mean and standard deviation over seeds, the markdown table."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from vlret.data._io import write_json
from vlret.devices import describe_machine
from vlret.suite.cells import CellContext
from vlret.suite.page import table_title, write_page
from vlret.suite.rows import Row


def _recall_columns(media: str) -> tuple[tuple[str, str, int], ...]:
    """Text-to-``media`` recalls, the reverse R@1 and rsum: (metric key, header, scale to percent)."""
    return (
        ("t2i_r1", f"T→{media} R@1", 100),
        ("t2i_r5", "R@5", 100),
        ("t2i_r10", "R@10", 100),
        ("i2t_r1", f"{media}→T R@1", 100),
        ("rsum", "rsum", 100),
    )


#: each table's metric columns: (metric key, header, scale to percent)
TABLE_METRICS = {
    "retrieval": _recall_columns("I"),
    "video": _recall_columns("V"),
    "prompts": (  # accuracies and mAP are percentages already
        ("base_acc", "base", 1),
        ("new_acc", "new", 1),
        ("hm", "HM", 1),
        ("base_map", "base mAP", 1),
        ("new_map", "new mAP", 1),
    ),
}


#: the cost columns: (cost key, header)
COSTS = (
    ("train_seconds", "train s"),
    ("eval_seconds", "eval s"),
    ("pairs_per_query", "pairs / query"),
    ("model_calls", "model calls"),
    ("tokens", "tokens"),
    ("parameters", "params"),
)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def summarise(rows: list[Row], seeds: list[int], ctx: CellContext, settings, plan: dict) -> dict:
    """One entry per row: its metrics and costs as mean and std over ``seeds``."""
    entries = []
    for row in rows:
        records = [ctx.record(row.name, s) for s in seeds]
        records = [r for r in records if r is not None]
        if not records:
            continue
        metrics = {key: mean_std([r["metrics"][key] for r in records]) for key in records[0]["metrics"]}
        costs = {}
        for key in [k for k, _ in COSTS] + ["queries"]:  # queries: to put costs per query
            values = [r["costs"][key] for r in records if r["costs"].get(key) is not None]
            costs[key] = mean_std(values) if values else None
        entries.append(
            {
                "row": row.name,
                "family": row.family,
                "kind": type(row).__name__,
                "table": row.table,
                "combination": row.combination,
                "seeds": [r["seed"] for r in records],
                "metrics": {k: {"mean": m, "std": s} for k, (m, s) in metrics.items()},
                "costs": {k: None if v is None else {"mean": v[0], "std": v[1]} for k, v in costs.items()},
                "training": plan.get(row.name),
            }
        )
    return {
        "settings": asdict(settings),
        "machine": describe_machine(),
        "rows": entries,
    }


def _metric(value: dict | None, scale: float) -> str:
    if value is None:
        return "–"
    text = f"{value['mean'] * scale:.1f}"
    return text if value["std"] is None else f"{text} ± {value['std'] * scale:.1f}"


def _cost(value: dict | None) -> str:
    if value is None:
        return "–"
    text = _compact(value["mean"])
    return text if not value["std"] else f"{text} ± {_compact(value['std'])}"  # no "± 0" for fixed costs


def _compact(x: float) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f} M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f} k"
    if abs(x) >= 100 or float(x).is_integer():
        return f"{x:.0f}"
    return f"{x:.1f}"


def markdown_table(summary: dict, table: str = "retrieval") -> str:
    """One of the results tables: metrics (mean ± std over seeds), then the costs; * marks combinations."""
    columns = TABLE_METRICS[table]
    costs = COSTS if table != "prompts" else (COSTS[0], COSTS[1], ("parameters", "learnt numbers"))
    headers = ["row", *[h for _, h, _ in columns], *[h for _, h in costs]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for entry in summary["rows"]:
        if entry.get("table", "retrieval") != table:
            continue
        name = entry["row"] + (" *" if entry["combination"] else "")
        cells = [_metric(entry["metrics"].get(key), scale) for key, _, scale in columns]
        cells += [_cost(entry["costs"].get(key)) for key, _ in costs]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def tables(summary: dict) -> dict[str, str]:
    """The markdown tables that have rows, by table name."""
    present = {e.get("table", "retrieval") for e in summary["rows"]}
    return {t: markdown_table(summary, t) for t in TABLE_METRICS if t in present}


def write_outputs(summary: dict, out: Path) -> None:
    """``summary.json``, ``table.md`` and ``index.html`` in ``out``."""
    write_json(out / "summary.json", summary)
    by_table = tables(summary)
    titled = [f"{table_title(t, summary['settings'])}:\n\n{md}" for t, md in by_table.items()]
    text = "\n\n".join([*titled, *(f"Note: {n}" for n in summary.get("notes", []))])
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    write_page(summary, by_table, out / "index.html")
