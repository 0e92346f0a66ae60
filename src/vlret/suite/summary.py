"""Aggregating a suite's cell records: mean and standard deviation over seeds, the markdown table."""

from __future__ import annotations

import platform
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from vlret.data._io import write_json
from vlret.suite.cells import CellContext
from vlret.suite.rows import Row

#: the table's recall columns: (metric key, header)
RECALLS = (
    ("t2i_r1", "T→I R@1"),
    ("t2i_r5", "R@5"),
    ("t2i_r10", "R@10"),
    ("i2t_r1", "I→T R@1"),
    ("rsum", "rsum"),
)
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
        for key, _ in COSTS:
            values = [r["costs"][key] for r in records if r["costs"].get(key) is not None]
            costs[key] = mean_std(values) if values else None
        entries.append(
            {
                "row": row.name,
                "family": row.family,
                "kind": type(row).__name__,
                "combination": row.combination,
                "seeds": [r["seed"] for r in records],
                "metrics": {k: {"mean": m, "std": s} for k, (m, s) in metrics.items()},
                "costs": {k: None if v is None else {"mean": v[0], "std": v[1]} for k, v in costs.items()},
                "training": plan.get(row.name),
            }
        )
    return {
        "settings": asdict(settings),
        "machine": machine(),
        "rows": entries,
    }


def machine() -> str:
    """The machine in words: CPU count, GPU if any, torch version."""
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def _cell(value: dict | None, percent: bool) -> str:
    if value is None:
        return "–"
    scale = 100 if percent else 1
    mean, std = value["mean"] * scale, value["std"]
    text = f"{mean:.1f}" if percent else _compact(mean)
    if std is not None:
        text += f" ± {std * scale:.1f}" if percent else f" ± {_compact(std * scale)}"
    return text


def _compact(x: float) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f} M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f} k"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def markdown_table(summary: dict) -> str:
    """The results table: recalls in percent (mean ± std over seeds), then the costs."""
    headers = ["row", *[h for _, h in RECALLS], *[h for _, h in COSTS]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for entry in summary["rows"]:
        name = entry["row"] + (" *" if entry["combination"] else "")
        recalls = [_cell(entry["metrics"].get(key), percent=True) for key, _ in RECALLS]
        costs = [_cell(entry["costs"].get(key), percent=False) for key, _ in COSTS]
        lines.append("| " + " | ".join([name, *recalls, *costs]) + " |")
    return "\n".join(lines)


def write_outputs(summary: dict, out: Path) -> None:
    """``summary.json``, ``table.md`` and ``index.html`` in ``out``."""
    from vlret.suite.page import write_page

    write_json(out / "summary.json", summary)
    table = markdown_table(summary)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    write_page(summary, table, out / "index.html")
