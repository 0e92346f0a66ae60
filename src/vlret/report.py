"""A self-contained HTML report of a run: results table, training curves, and sample queries with their
top-5 retrieved images (the paired image outlined in green, other images the query is also true of in amber),
and how the run was made (machine, time, command). Pictures are embedded as base64, so the file can be mailed
or opened anywhere."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlret.evaluate.results import results_table


@dataclass
class SampleSection:
    """More sample queries under a heading of their own, with a paragraph that introduces them."""

    heading: str
    queries: list[SampleQuery]
    intro: str = ""


@dataclass
class RetrievedImage:
    """One result of a sample query. ``correct``: the image the caption was written for; ``fits``: another
    image the caption is true of as well (the benchmark's recall counts only the paired one)."""

    path: Path
    score: float
    correct: bool
    fits: bool = False


@dataclass
class SampleQuery:
    """A query and its top results; ``label`` says which ranking they come from ("after VISA")."""

    text: str
    results: list[RetrievedImage]
    label: str = ""

    def explanation(self) -> str | None:
        """Why a query whose paired image is not shown is not simply a miss, when that is so."""
        if any(hit.correct for hit in self.results) or not self.results or not self.results[0].fits:
            return None
        n = sum(hit.fits for hit in self.results)
        return (
            f"The paired image is not in the top {len(self.results)}, but the caption is true of "
            f"{'all' if n == len(self.results) else n} of these {len(self.results)}, the first among them: "
            "these are right answers that the benchmark's recall does not count (it scores only the image "
            "the caption was written for)."
        )


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumbnail(path: Path, size: int = 96) -> str:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img = img.resize((size, round(size * img.height / img.width)), Image.Resampling.NEAREST)
        return _png_data_url(img)


def training_curves(records: list[dict]) -> str | None:
    """A PNG (data URL) of the training loss per step and the validation recalls per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return None
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="#3465a4")
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    for key, label in (
        ("t2i_r1", "text→image R@1"),
        ("t2i_r5", "text→image R@5"),
        ("i2t_r1", "image→text R@1"),
    ):
        if val and key in val[0]:
            ax_val.plot([r["epoch"] for r in val], [100 * r[key] for r in val], marker="o", label=label)
    ax_val.set(title="validation", xlabel="epoch", ylabel="%")
    if val:
        ax_val.legend(loc="lower right")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.query { margin: 1.2rem 0; } .query p { margin: 0 0 0.4rem; font-weight: 600; }
.hits { display: flex; gap: 8px; } figure { margin: 0; text-align: center; font-size: 12px; }
figure img { border: 4px solid #ddd; image-rendering: pixelated; }
figure.correct img { border-color: #2e9d3a; } figure.fits img { border-color: #e0a020; }
.query p.why, p.why { font-weight: normal; color: #555; font-size: 14px; margin: 0 0 0.4rem; }
.query .label { font-weight: normal; color: #555; }
.caveat { background: #fff6e0; border-left: 4px solid #e0a020; padding: 6px 10px; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; } dl.run dt { font-weight: 600; }
dl.run dd { margin: 0; font-family: ui-monospace, monospace; }
"""


def markdown_table_to_html(md: str) -> str:
    lines = [line for line in md.splitlines() if line.strip() and not set(line) <= set("|-")]
    rows = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    path: str | Path,
    title: str,
    results: list[dict],
    names: list[str],
    records: list[dict],
    samples: list[SampleQuery],
    notes: list[str] = (),
    more_samples: list[SampleSection] = (),
    caveat: str | None = None,
    about: dict[str, str] | None = None,
) -> Path:
    """Write the HTML report; returns its path.

    ``more_samples``: further sections after the sample queries (the demo shows VISA's re-ranking there);
    ``caveat``: a highlighted paragraph under the table; ``about``: how the run was made (machine, run time,
    the command that reproduces it), listed last."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    parts.append("<h2>Results (test split)</h2>" + markdown_table_to_html(results_table(results, names)))
    if caveat:
        parts.append(f"<p class='caveat'>{html.escape(caveat)}</p>")
    parts.extend(f"<p>{html.escape(n)}</p>" for n in notes)
    curves = training_curves(records)
    if curves:
        parts.append(f"<h2>Training</h2><img alt='training curves' src='{curves}'>")
    for section in [SampleSection("Sample queries: top 5", samples), *more_samples]:
        if section.queries:
            parts.append(f"<h2>{html.escape(section.heading)}</h2>")
            intro = f"{section.intro} " if section.intro else ""
            parts.append(
                f"<p class='why'>{html.escape(intro)}Green: the image the caption was written for. Amber: "
                "another image the caption is true of.</p>"
            )
            parts.extend(_sample_html(sample) for sample in section.queries)
    if about:
        rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in about.items())
        parts.append(f"<h2>This run</h2><dl class='run'>{rows}</dl>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _sample_html(sample: SampleQuery) -> str:
    label = f" <span class='label'>({html.escape(sample.label)})</span>" if sample.label else ""
    parts = [f"<div class='query'><p>“{html.escape(sample.text)}”{label}</p>"]
    why = sample.explanation()
    if why:
        parts.append(f"<p class='why'>{html.escape(why)}</p>")
    parts.append("<div class='hits'>")
    for rank, hit in enumerate(sample.results, 1):
        kind = "correct" if hit.correct else "fits" if hit.fits else None
        cls = f" class='{kind}'" if kind else ""
        label = {"correct": " · paired", "fits": " · fits"}.get(kind, "")
        parts.append(
            f"<figure{cls}><img alt='rank {rank}' src='{_thumbnail(hit.path)}'>"
            f"<figcaption>#{rank} · {hit.score:.3f}{label}</figcaption></figure>"
        )
    parts.append("</div></div>")
    return "".join(parts)
