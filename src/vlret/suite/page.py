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


def pareto_plot(entries: list[dict]) -> str | None:
    """R@1 (text to image) against seconds per query, log scale; the front joined and named."""
    points, names, kinds = [], [], []
    for entry in entries:
        cost, r1 = query_cost(entry), entry["metrics"].get("t2i_r1")
        if cost is not None and r1 is not None and cost > 0:
            points.append((cost, 100 * r1["mean"]))
            names.append(entry["row"])
            kinds.append(MARKERS.get(entry.get("kind"), FIRST_STAGE))
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 6))
    for kind in dict.fromkeys(kinds):
        marker, colour, label = kind
        mine = [p for p, k in zip(points, kinds, strict=True) if k == kind]
        ax.scatter(
            [p[0] for p in mine], [p[1] for p in mine], marker=marker, color=colour, label=label, zorder=3
        )
    front = pareto_front(points)
    ax.plot(
        [points[i][0] for i in front], [points[i][1] for i in front], color="#cc0000", label="Pareto front"
    )
    for i in front:  # only the front is named: the rest is in the table
        ax.annotate(names[i], points[i], fontsize=8, xytext=(5, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(
        xlabel="evaluation seconds per text query (log)",
        ylabel="text→image R@1 (%)",
        title="R@1 against query cost (named: the Pareto front)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _png(fig)


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


def write_page(summary: dict, tables: dict[str, str], path: Path) -> Path:
    """Write ``index.html`` for ``summary`` (its rows and settings) with its markdown ``tables`` (by name:
    ``retrieval``, ``video``, ``prompts``); the figures plot the text-image retrieval rows."""
    entries = [e for e in summary["rows"] if e.get("table", "retrieval") == "retrieval"]
    settings = summary["settings"]
    title = f"vlret bench: {settings['suite']} suite"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>Seeds {', '.join(map(str, settings['seeds']))}; machine: {html.escape(summary['machine'])}. "
        "Recalls in percent on the test split, mean ± standard deviation over seeds; * marks a combination "
        "of methods that no seed repository runs.</p>",
    ]
    for name, table in tables.items():
        parts.append(f"<h2>{html.escape(table_title(name, settings))}</h2>")
        parts.append(markdown_table_to_html(table).replace("<table>", f"<table id='results-{name}'>", 1))
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in summary.get("notes", [])]
    figures = (
        ("pareto", pareto_plot(entries), "R@1 against query cost"),
        ("recall-bars", bar_chart(entries, _recall, "text→image R@1", "%"), "R@1 per row"),
        ("train-bars", bar_chart(entries, _train_seconds, "training seconds", "s"), "training time per row"),
    )
    for ident, figure, alt in figures:
        if figure:
            parts.append(
                f"<h2>{html.escape(alt)}</h2><img id='{ident}' alt='{html.escape(alt)}' src='{figure}'>"
            )
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
