"""A cold ``vlret search`` (a new process: imports, the index's model, one query) against the same query in a
warm process (the searcher already open), in one run.

The index is ``conse`` over the sample photos (scikit-learn's and scikit-image's), as a newcomer builds it;
``--smoke`` uses a saved tiny model instead. A text query over a conse index is embedded in numpy
(:mod:`vlret.models.text_queries`), so the cold process never imports torch; the script checks that, then
times the parts of a cold run: starting Python, vlret's command line and searcher, and (what an index of
another model still needs) importing torch. Cold and warm runs are interleaved (best of ``--repeats``).
Target: a cold search <= 3 s on 2 cores. Prints the cold / warm ratio last.

    .venv/bin/python bench/cli_search.py [--repeats 3] [--query "a cat"]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import best, interleaved, parse_args, spread
from vlret.index import Searcher, build_index

SMOKE = {"repeats": 1, "model": "tiny"}


def _cold(index: Path, query: str) -> float:
    """One ``vlret search`` process, start to end."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "vlret.cli", "search", str(index), query, "-k", "3"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"vlret search failed: {done.stderr[-2000:]}")
    return seconds


def _python(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--query", default="a cat")
    parser.add_argument("--model", choices=["conse", "tiny"], default="conse")
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from vlret.data.sample_photos import write_sample_photos

        write_sample_photos(tmp / "photos")
        model = "conse"
        if args.model == "tiny":
            from vlret.models import create_model

            create_model("tiny-cnn", captions=["a cat", "a red car"], seed=0).save(tmp / "model")
            model = str(tmp / "model")
        index = build_index(model, tmp / "photos.vlret", images=tmp / "photos", progress=False)
        searcher = Searcher(index)
        searcher.text_to_image(args.query, 3)  # warm: the model loaded, the page cache filled

        def warm() -> float:
            start = time.perf_counter()
            searcher.text_to_image(args.query, 3)
            return time.perf_counter() - start

        times = interleaved({"cold process": lambda: _cold(index, args.query), "warm": warm}, args.repeats)
        print(f"index: {args.model} over {len(searcher.items)} sample photos; query {args.query!r}")
        for side, values in times.items():
            print(spread(side, values, "s"))
        torch_loaded = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from vlret.cli import main; "
                f"main(['search', {str(index)!r}, {args.query!r}, '-k', '3']); "
                "print('torch' in sys.modules)",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        ).stdout.split()[-1]
        print(f"the cold search imported torch: {torch_loaded}")
        floor = {
            "python": _python("pass"),
            "python + vlret's command line and searcher": _python(
                "import vlret.cli, vlret.cli.search, faiss; from vlret.index.search import Searcher"
            ),
            "python + torch (an index of another model)": _python("import torch"),
        }
        print(
            "parts of a cold process (one run each): " + ", ".join(f"{k} {v:.2f} s" for k, v in floor.items())
        )
        cold, warm_best = best(times["cold process"]), best(times["warm"])
        print(f"cold search: {cold:.2f} s (target <= 3 s)")
        print(f"cold / warm: {cold / warm_best:.0f}")


if __name__ == "__main__":
    main()
