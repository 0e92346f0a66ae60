"""The HTML page of a ``vlret bench`` run: the table, text-to-image R@1 against query cost with its Pareto
front, and bar charts of R@1 and of training time. Pictures are embedded, so the page stands alone."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from vlret.report import STYLE, markdown_table_to_html


def query_cost(entry: dict) -> float | None:
    """Evaluation seconds per text query (first stage and re-ranking together)."""
    costs = entry["costs"]
    if costs.get("eval_seconds") is None or not costs.get("queries"):
        return None
    return costs["eval_seconds"]["mean"] / costs["queries"]["mean"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats (as cheap or cheaper, and higher recall), ordered
    by cost; of equal points the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: how the plot tells the rows apart: first stages, ITM re-ranked, VISA re-ranked
MARKERS = {"ItmRow": ("^", "#c17d11", "+ ITM re-rank"), "VisaRow": ("s", "#75507b", "+ VISA")}
FIRST_STAGE = ("o", "#3465a4", "first stage")


def pareto_points(entries: list[dict]) -> list[dict]:
    """The rows the R@1-against-cost plot can place, numbered from 1 as the plot labels them."""
    points = []
    for entry in entries:
        cost, r1 = query_cost(entry), entry["metrics"].get("t2i_r1")
        if cost is not None and r1 is not None and cost > 0:
            points.append(
                {
                    "n": len(points) + 1,
                    "row": entry["row"],
                    "cost": cost,
                    "r1": 100 * r1["mean"],
                    "kind": MARKERS.get(entry.get("kind"), FIRST_STAGE),
                }
            )
    front = set(pareto_front([(p["cost"], p["r1"]) for p in points]))
    for i, point in enumerate(points):
        point["front"] = i in front
    return points


def pareto_plot(points: list[dict]) -> str | None:
    """R@1 (text to image) against seconds per query, log scale; every point carries its number (the
    table under the plot names it) and the front is joined."""
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 6))
    for kind in dict.fromkeys(p["kind"] for p in points):
        marker, colour, label = kind
        mine = [p for p in points if p["kind"] == kind]
        ax.scatter(
            [p["cost"] for p in mine],
            [p["r1"] for p in mine],
            marker=marker,
            color=colour,
            label=label,
            zorder=3,
        )
    front = sorted((p for p in points if p["front"]), key=lambda p: p["cost"])
    ax.plot([p["cost"] for p in front], [p["r1"] for p in front], color="#cc0000", label="Pareto front")
    for p in points:
        ax.annotate(
            str(p["n"]),
            (p["cost"], p["r1"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
            fontweight="bold" if p["front"] else "normal",
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="evaluation seconds per text query (log)",
        ylabel="text→image R@1 (%)",
        title="R@1 against query cost (numbers: the rows in the table below; bold: the Pareto front)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _png(fig)


def points_table(points: list[dict]) -> str:
    """The plot's key: each number's row, cost and R@1, and whether it is on the front."""
    rows = "".join(
        f"<tr><td>{p['n']}</td><td>{html.escape(p['row'])}</td><td>{p['cost'] * 1000:.3g}</td>"
        f"<td>{p['r1']:.1f}</td><td>{'yes' if p['front'] else ''}</td></tr>"
        for p in points
    )
    return (
        "<table id='pareto-points'><thead><tr><th>#</th><th>row</th><th>ms per query</th>"
        f"<th>T→I R@1</th><th>Pareto front</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def bar_chart(entries: list[dict], values, title: str, xlabel: str) -> str | None:
    """Horizontal bars (with the std over seeds as error bars) of ``values(entry) -> (mean, std)``."""
    bars = [(e["row"], *value) for e in entries if (value := values(e)) is not None]
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(bars) + 1.2))
    ys = range(len(bars))
    ax.barh(
        list(ys),
        [b[1] for b in bars],
        xerr=[b[2] or 0 for b in bars],
        color="#73a657",
        ecolor="#333",
        capsize=2,
    )
    ax.set_yticks(list(ys), [b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _recall(entry: dict):
    r1 = entry["metrics"].get("t2i_r1")
    return None if r1 is None else (100 * r1["mean"], r1["std"] and 100 * r1["std"])


def _train_seconds(entry: dict):
    t = entry["costs"].get("train_seconds")
    return None if t is None else (t["mean"], t["std"])


def table_title(table: str, settings: dict) -> str:
    """A results table's heading: what it measures, on which split of which data."""
    if settings["suite"] != "synthetic":
        split = settings.get("test_split", "test")
        return f"Text–image retrieval ({split} split of {Path(settings['suite']).name})"
    return {
        "retrieval": "Text–image retrieval (test split of the synthetic benchmark)",
        "video": "Text–video retrieval (test split of the synthetic video benchmark)",
        "prompts": "Prompt learning, base-to-new (test split of the synthetic class benchmark)",
    }[table]


def smoke_reasons(summary: dict) -> list[str]:
    """Why the run's numbers cannot compare methods, if they cannot: training cut to a few steps, a
    budget too small for one epoch, or a benchmark far below the calibrated size."""
    settings, reasons = summary["settings"], []
    if settings.get("steps") is not None:
        reasons.append(
            f"--steps {settings['steps']}: every training cell stopped after {settings['steps']} steps"
        )
    cut = [e["row"] for e in summary["rows"] if (e.get("training") or {}).get("max_steps")]
    if cut:
        reasons.append(
            f"the budget ({settings.get('budget_minutes')} min) left {len(cut)} row(s) less than one epoch: "
            + ", ".join(cut)
        )
    images = settings.get("images")
    if settings.get("suite") == "synthetic" and images is not None and images < SMOKE_IMAGES:
        reasons.append(f"--images {images}: the calibrated benchmark has 5,000 images")
    return reasons


#: a synthetic suite on fewer images than this is a smoke run: its test split is too small to rank methods
SMOKE_IMAGES = 1000


def settings_html(settings: dict) -> str:
    """The run's settings as a list (a setting left at its default shows as such)."""
    rows = "".join(
        f"<dt>{html.escape(key)}</dt><dd>{html.escape('default' if value is None else str(value))}</dd>"
        for key, value in settings.items()
        if value not in ([], "")
    )
    return f"<dl class='run' id='settings'>{rows}</dl>"


def write_page(summary: dict, tables: dict[str, str], path: Path) -> Path:
    """Write ``index.html`` for ``summary`` (its rows and settings) with its markdown ``tables`` (by name:
    ``retrieval``, ``video``, ``prompts``); the figures plot the text-image retrieval rows."""
    entries = [e for e in summary["rows"] if e.get("table", "retrieval") == "retrieval"]
    settings = summary["settings"]
    title = f"vlret bench: {settings['suite']} suite"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    reasons = smoke_reasons(summary)
    if reasons:
        items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
        parts.append(
            "<div class='caveat' id='smoke'><strong>A smoke run:</strong> its numbers show that every row runs, "
            f"not how the methods compare.<ul>{items}</ul></div>"
        )
    parts.append(
        f"<p>Seeds {', '.join(map(str, settings['seeds']))}; machine: {html.escape(summary['machine'])}. "
        "Recalls in percent on the test split, mean ± standard deviation over seeds; * marks a combination "
        "of methods that no seed repository runs.</p>"
    )
    for name, table in tables.items():
        parts.append(f"<h2>{html.escape(table_title(name, settings))}</h2>")
        parts.append(markdown_table_to_html(table).replace("<table>", f"<table id='results-{name}'>", 1))
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in summary.get("notes", [])]
    points = pareto_points(entries)
    figures = (
        ("pareto", pareto_plot(points), "R@1 against query cost"),
        ("recall-bars", bar_chart(entries, _recall, "text→image R@1", "%"), "R@1 per row"),
        ("train-bars", bar_chart(entries, _train_seconds, "training seconds", "s"), "training time per row"),
    )
    for ident, figure, alt in figures:
        if figure:
            parts.append(
                f"<h2>{html.escape(alt)}</h2><img id='{ident}' alt='{html.escape(alt)}' src='{figure}'>"
            )
            if ident == "pareto":
                parts.append(points_table(points))
    parts.append("<h2>Settings</h2>" + settings_html(settings))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
