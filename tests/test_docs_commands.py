"""What the docs say, runs (issue 34, section 1): every command line of the README's and the docs' shell
blocks that starts with ``vlret``, ``.venv/bin/vlret`` or ``make``, and every Python block, runs here.

The pages run in one workspace (the current folder of every command), in page order, each page's commands in
their order, so later commands read what earlier ones wrote, as a reader's would. Words a page uses for the
reader's own things map to stand-ins through :data:`PLACEHOLDERS` and :data:`FOLDERS`; what CI cannot have
is swapped, per command, for a local stand-in in :data:`STAND_INS`, which also says why:

- hub ids resolve through an offline hub cache whose ids hold tiny architecture-true models (the command
  runs as written; ``from_pretrained`` finds them as it finds downloaded weights);
- ``--address auto`` finds a Ray cluster the test starts with ``ray start --head``; a GPU flag asks for 0;
- a remote LLM server is a local OpenAI-compatible one, named in the config the VISA page shows;
- a long run is the same command with a few settings appended that shorten it (steps, sizes, queries);
- ``vlret serve`` runs until its page answers, then stops; ``&`` commands run together as processes.

A command added to a page with no entry in :data:`STAND_INS` fails :func:`test_every_documented_command_has_an_entry`
(with the command), and so does an entry whose command left the pages.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

import doc_stand_ins as stand_ins
from vlret.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
COMMAND_START = re.compile(r"^(\.venv/bin/vlret|vlret|make)\b")
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)


# ----- what the pages hold -----------------------------------------------------------------------------------


def _blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block of ``page``, indented ones (in lists) too."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        indent = len(match.group(1))
        body = "\n".join(line[indent:] for line in match.group(3).splitlines())
        found.append((match.group(2), body))
    return found


def _command_lines(body: str) -> list[str]:
    """A shell block's lines, continuation lines joined, comments and runs of blanks removed."""
    lines, current = [], ""
    for raw in body.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        line = re.sub(r"\s+#\s.*$", "", current + raw).strip()
        current = ""
        if line and not line.startswith("#"):
            lines.append(" ".join(line.split()))
    return lines


def documented_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every command line the pages give, in page order."""
    found = []
    for page in PAGES:
        for language, body in _blocks(page):
            if language in SHELL_BLOCKS:
                name = str(page.relative_to(ROOT))
                found += [(name, line) for line in _command_lines(body) if COMMAND_START.match(line)]
    return found


def documented_python() -> list[tuple[str, str]]:
    """``(page, code)`` for every Python block; a block repeated on a later page (the README's example in
    the Python API guide) runs once, under its first page."""
    blocks = [
        (str(page.relative_to(ROOT)), body)
        for page in PAGES
        for language, body in _blocks(page)
        if language == "python"
    ]

    def statements(code: str) -> tuple[str, ...]:  # the code less its comments and spacing
        return tuple(" ".join(line.split("#")[0].split()) for line in code.splitlines())

    first: dict[tuple[str, ...], tuple[str, str]] = {}
    for page, code in blocks:
        first.setdefault(statements(code), (page, code))
    return list(first.values())


# ----- how each command runs here ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """How one documented command runs here: as written (the default), with ``swap`` (text of the command
    -> its stand-in) and ``append`` (settings that shorten it) applied; ``instead`` replaces a ``make``
    target by the vlret command it runs; ``also`` are the other values of an array variable (each runs
    too: the tasks of an array); ``shows`` are lines the page says the command prints (machine-independent
    parts)."""

    why: str = ""
    swap: dict[str, str] = field(default_factory=dict)
    append: tuple[str, ...] = ()
    instead: str | None = None
    also: tuple[dict[str, str], ...] = ()
    shows: tuple[str, ...] = ()
    exempt: bool = False


AS_WRITTEN = Step()
TRAIN_SHORT = ("train.max_steps=2", "train.batch_size=4", "eval.batch_size=8")
PIXELS_32 = ("model.options.image_options.image_size=32",)  # the stand-in towers' input size
DEMO = "vlret demo --images 80 --quiet train.epochs=1 train.batch_size=16 schedule.warmup_steps=2"  # the demo at the size of tests/test_demo.py

NARROW_SGRAF = (  # the SGR / SAF recipes' widths, narrowed (appended to both trainings above)
    "model.options.image_options.dim=8",
    "model.options.embed_dim=16",
    "model.options.text_options.hidden=16",
    "model.options.text_options.word_dim=8",
    "model.head.embed_dim=16",
    "model.head.sim_dim=8",
    "model.head.n_regions=4",
)


STAND_INS: dict[str, Step] = {
    # ----- README.md, docs/index.md, docs/getting-started.md
    "make demo": Step(
        "make demo sets up .venv, then runs `vlret demo` (the test's environment is set up); 80 images, 1 epoch",
        instead=DEMO,
        shows=(
            "| run | protocol | T→I R@1 | R@5 | R@10 | I→T R@1 | R@5 | R@10 | rsum |",
            "| tiny-cnn untrained | generic |",
            "| tiny-cnn trained | generic |",
            "| tiny-cnn trained + VISA | generic |",
            "Real photos, searched by text with conse (training-free; 7 photos, runs/demo/photos_index):",
            "'a cat' cat.png",
            "'a cup of coffee' coffee.png",
            "'a flower' flower.jpg",
        ),
    ),
    "make test": Step("this test suite: run from here it would run itself", exempt=True),
    ".venv/bin/vlret index build --model conse --images ~/Pictures --out photos.vlret": AS_WRITTEN,
    '.venv/bin/vlret search photos.vlret "a dog on a beach"': AS_WRITTEN,
    ".venv/bin/vlret serve photos.vlret": AS_WRITTEN,
    "vlret data synth --out data/synth": Step(
        "the demo's benchmark at the demo's test size", append=("--images", "80")
    ),
    "vlret data stats data/synth/dataset.json": AS_WRITTEN,
    "vlret eval --model tiny-cnn --data data/synth/dataset.json --out out/untrained.json": AS_WRITTEN,
    "vlret results table out/untrained.json": AS_WRITTEN,
    "vlret eval --model hf:openai/clip-vit-base-patch32 --data dataset_flickr30k.json --media-root "
    "/data/flickr30k-images --protocol flickr30k-1k --out out/clip-f30k.json": AS_WRITTEN,
    "vlret eval --scores my_scores.npy --data dataset_coco.json --protocol coco-1k --out out/mine.json": AS_WRITTEN,
    # ----- docs/guides/bench.md
    "vlret bench --images 2000 --seeds 0 1 --budget-minutes 50 --out runs/bench_synth": Step(
        "one seed, 120 images, the cosine rows in a budget of 15 s",
        swap={"--budget-minutes 50": "--budget-minutes 0.25"},
        append=("--images", "120", "--seeds", "0", "--methods", "cosine", "--quiet"),
    ),
    "vlret bench --suite data/f30k/dataset_flickr30k.json --media-root data/f30k/images --visa-config "
    "visa_vllm.yaml --seeds 0 1 --budget-minutes 600 --out runs/bench_f30k": Step(
        "Flickr30K's files at 6 test images (VISA asks the local server about every test caption); one seed, "
        "the cosine rows and their VISA re-ranking in a budget of 15 s",
        swap={"data/f30k/": "data/f30k_small/", "--budget-minutes 600": "--budget-minutes 0.25"},
        append=("--seeds", "0", "--methods", "cosine", "visa", "--set", "train.batch_size=4", "--quiet"),
    ),
    "vlret bench --suite data/coco/annotations --media-root data/coco/images --recipes coco --out "
    "runs/bench_coco": Step(
        "COCO's LAVIS files at 4 test images; one step of the AVSE rows",
        append=("--steps", "1", "--methods", "avse", "--set", "train.batch_size=4", *PIXELS_32, "--quiet"),
    ),
    "vlret bench --suite data/f30k_precomp --out runs/bench_f30k_precomp": Step(
        "narrow precomp features at 4 test images; one step of the SGRAF rows, narrowed",
        swap={"data/f30k_precomp": "data/f30k_precomp_small"},
        append=(
            "--steps",
            "1",
            "--methods",
            "sgraf",
            "--set",
            "train.batch_size=4",
            *NARROW_SGRAF,
            "--quiet",
        ),
    ),
    "vlret bench --suite data/synth_2000_pairs.csv --media-root data/synth_2000 --methods cosine sgraf visa "
    "--visa-config runs/visa_offline.yaml --budget-minutes 60 --out runs/bench_csv": Step(
        "the synthetic benchmark's pairs at 40 images; one step of batch 4, the SGR / SAF widths narrowed "
        "(the region features keep the backbone's width and count)",
        swap={"--budget-minutes 60": "--steps 1"},
        append=("--set", "train.batch_size=4", *NARROW_SGRAF[1:-1], "--quiet"),
    ),
    # ----- docs/guides/scaling-out.md
    "vlret index build --model M --images /data/photos --out /shared/photos.vlret &": AS_WRITTEN,
    "vlret index build --model M --images /data/photos --out /shared/photos.vlret --engine ray --workers 8": (
        AS_WRITTEN
    ),
    "vlret index build ... --engine ray --address auto --workers 64 --gpus-per-worker 1": Step(
        "`...` is the build above; a cluster started here with `ray start --head`; 2 tasks, no GPU",
        swap={
            "...": "--model M --images /data/photos --out /shared/photos.vlret",
            "--workers 64": "--workers 2",
            "--gpus-per-worker 1": "--gpus-per-worker 0",
        },
    ),
    "vlret index build --model M --images /data/photos --out /shared/photos-disk.vlret --on-disk": AS_WRITTEN,
    "vlret rerank visa --model M --data D --out /shared/visa --shard 0/4": Step(
        "the other three tasks of the array run too",
        also=({}, {"0/4": "1/4"}, {"0/4": "2/4"}, {"0/4": "3/4"}),
    ),
    "vlret rerank visa-merge --data D --out /shared/visa": AS_WRITTEN,
    "vlret rerank visa --model M --data D --out /shared/visa --engine ray --workers 4": AS_WRITTEN,
    "vlret index export /shared/photos.vlret --out /shared/photos-emb": AS_WRITTEN,
    "vlret index build --model M --embeddings /shared/photos-emb --out other.vlret": AS_WRITTEN,
    "vlret index export /shared/photos.vlret --format qdrant --qdrant http://qdrant:6333": Step(
        "Qdrant's embedded local mode in a folder stands in for a server",
        swap={"http://qdrant:6333": "shared/qdrant"},
    ),
    "vlret serve /shared/photos.vlret --qdrant http://qdrant:6333 --workers 4": Step(
        "needs a Qdrant server: the embedded local mode is one process, so no folder stands in for "
        "--workers 4 (serve --qdrant FOLDER runs in test_qdrant.py)",
        exempt=True,
    ),
    # ----- docs/guides/search.md
    "vlret index build --model runs/demo/train/checkpoints/best/model --images ~/photos --out ~/photos.vlret": (
        AS_WRITTEN
    ),
    'vlret search ~/photos.vlret "a large red circle in the top left" -k 5': AS_WRITTEN,
    "vlret search ~/photos.vlret --image query.jpg --json": AS_WRITTEN,
    'vlret search ~/photos.vlret "a large red circle" "a small blue square" -k 3': AS_WRITTEN,
    "vlret serve ~/photos.vlret --port 8000": AS_WRITTEN,
    "vlret index build --model runs/demo/train/checkpoints/best/model --images ~/photos --out ~/photos.vlret "
    "--verify": AS_WRITTEN,
    "vlret index build --model runs/demo/train/checkpoints/best/model --images ~/photos --out ~/photos.vlret "
    "--retrain": AS_WRITTEN,
    "vlret index build --model runs/demo/train/checkpoints/best/model --images ~/photos --out ~/photos.vlret "
    "--rebuild": AS_WRITTEN,
    "vlret index watch ~/photos --index ~/photos.vlret": Step(
        "runs until Ctrl-C: test_index_update.py watches a folder through events and the command line",
        exempt=True,
    ),
    "vlret index build --model M --images /data/photos --out /shared/photos.vlret --shard $SLURM_ARRAY_TASK_ID/8": Step(
        "every task of the array, 0 to 7",
        also=tuple({"$SLURM_ARRAY_TASK_ID": str(i)} for i in range(8)),
    ),
    "vlret index build --model runs/maxsim/checkpoints/best/model --data data/synth/dataset.json --split test --out "
    "maxsim.vlret --shortlist 200 [--first-stage runs/demo/train/checkpoints/best/model]": Step(
        "with the optional part", swap={"[--first-stage": "--first-stage", "model]": "model"}
    ),
    # ----- docs/guides/training.md
    "vlret train --recipe demo_tiny data.path=data/synth/dataset.json output_dir=runs/mine train.epochs=3": Step(
        "two steps", append=("train.max_steps=2",)
    ),
    "vlret train --recipe my_recipe.yaml --resume": Step("my_recipe.yaml: the recipe runs/mine recorded"),
    # ----- docs/guides/video.md
    "vlret data synth-video --out data/synth_video": Step("30 clips", append=("--clips", "30")),
    "vlret train --recipe video_meanp_synth_cpu output_dir=runs/synth_video/meanp": Step(
        "two steps", append=TRAIN_SHORT
    ),
    "vlret train --recipe video_temporal_synth_cpu output_dir=runs/synth_video/temporal": Step(
        "two steps", append=TRAIN_SHORT
    ),
    "vlret eval --model runs/synth_video/meanp/checkpoints/best/model --data data/synth_video/dataset.json "
    "--split test": AS_WRITTEN,
    "vlret rerank visa --model runs/synth_video/meanp/checkpoints/best/model --data data/synth_video/dataset.json "
    "--split test --config visa_video.yaml --out runs/synth_video/visa_meanp": AS_WRITTEN,
    # ----- docs/methods/avse.md
    "vlret train --recipe avse_f30k data.path=data/f30k/dataset_flickr30k.json data.media_root=data/f30k/images": Step(
        "two steps at the stand-ins' 32 px", append=(*TRAIN_SHORT, *PIXELS_32)
    ),
    "vlret eval --model runs/avse_f30k/checkpoints/best/model --data data/f30k/dataset_flickr30k.json "
    "--media-root data/f30k/images --protocol flickr30k-1k": AS_WRITTEN,
    # ----- docs/methods/rvlr.md
    "vlret train --recipe rvlr_stage1_f30k data.path=data/f30k/annotations data.media_root=data/f30k/images": Step(
        "two steps at 32 px; an ITM head of one 32-wide layer re-scoring 2 candidates (the 1,000-image "
        "evaluation below re-scores k_test candidates of each of its 5,000 queries)",
        append=(
            *TRAIN_SHORT,
            *PIXELS_32,
            "model.options.embed_dim=32",
            "model.head.dim=32",
            "model.head.layers=1",
            "model.head.heads=2",
            "model.head.k_test=2",
        ),
    ),
    "vlret features teacher --data data/f30k/annotations --media-root data/f30k/images --out data/f30k_teacher": (
        AS_WRITTEN
    ),
    "vlret train --recipe rvlr_f30k": Step("two steps", append=TRAIN_SHORT),
    "vlret eval --model runs/rvlr_f30k/checkpoints/best/model --data data/f30k/annotations --media-root "
    "data/f30k/images --split test --protocol flickr30k-1k --relevance rouge-l": AS_WRITTEN,
    # ----- docs/methods/textrefiner.md
    "vlret prompts train --recipe textrefiner_b2n --data oxford_pets/split_zhou_OxfordPets.json --images "
    "oxford_pets/images --seed 1 --out runs/pets_tr": Step(
        "2 shots, 1 epoch", append=("--shots", "2", "--epochs", "1", "--batch-size", "8")
    ),
    "vlret prompts eval runs/pets_tr/prompts --data oxford_pets/split_zhou_OxfordPets.json --images "
    "oxford_pets/images --out runs/pets_tr/result.json": AS_WRITTEN,
    "vlret results table runs/pets_tr/result.json": AS_WRITTEN,
    "vlret data synth-classes --out data/synth_classes": Step(
        "4 / 2 / 2 images a class", append=("--train", "4", "--val", "2", "--test", "2")
    ),
    "vlret train --recipe tiny_vit_clip_synth_cpu": Step("two steps", append=TRAIN_SHORT),
    "vlret prompts eval --zero-shot runs/synth/tiny_vit_clip/checkpoints/best/model --data "
    "data/synth_classes/split_zhou_SynthShapes.json": AS_WRITTEN,
    "vlret prompts train --recipe coop_synth_cpu --seed S --out RUN": Step(
        "2 shots, 1 epoch", append=("--shots", "2", "--epochs", "1", "--batch-size", "8")
    ),
    "vlret prompts eval RUN/prompts --data data/synth_classes/split_zhou_SynthShapes.json --out RUN/result.json": (
        AS_WRITTEN
    ),
    # ----- docs/methods/visa.md
    "vlret rerank visa --model runs/demo/train/checkpoints/best/model --data data/synth/dataset.json --out "
    "runs/visa": AS_WRITTEN,
    "vlret rerank visa --scores sim_base.npy --data dataset_flickr30k.json --media-root /data/flickr30k-images "
    "--config visa_vllm.yaml --out runs/visa-f30k": Step(
        "the first 4 queries (every query asks the server 1 + K x Q times)", append=("--queries", "4")
    ),
    # ----- docs/methods/vsl-sgraf.md
    "vlret train --recipe sgr_vsl_f30k data.path=data/f30k_precomp output_dir=runs/sgr": Step(
        "two steps of a narrow SGR (the 1,000-image evaluation scores 5 million pairs)", append=TRAIN_SHORT
    ),
    "vlret train --recipe saf_vsl_f30k data.path=data/f30k_precomp output_dir=runs/saf": Step(
        "two steps of a narrow SAF", append=TRAIN_SHORT
    ),
    "vlret eval --model runs/sgr/checkpoints/best/model --data data/f30k_precomp --protocol flickr30k-1k": (
        AS_WRITTEN
    ),
    "vlret eval --model runs/saf/checkpoints/best/model --data data/f30k_precomp --protocol flickr30k-1k": (
        AS_WRITTEN
    ),
    "vlret eval --ensemble runs/sgr/checkpoints/best/model runs/saf/checkpoints/best/model --data "
    "data/f30k_precomp --protocol flickr30k-1k": AS_WRITTEN,
}
for _kind in ("sgr", "saf"):
    _key = f"vlret train --recipe {_kind}_vsl_f30k data.path=data/f30k_precomp output_dir=runs/{_kind}"
    STAND_INS[_key] = Step(
        STAND_INS[_key].why, append=(*STAND_INS[_key].append, *NARROW_SGRAF[:-1], "model.head.n_regions=2")
    )

PLACEHOLDERS = {
    "M": "runs/demo/train/checkpoints/best/model",
    "D": "data/synth/dataset.json",
    "S": "1",
    "RUN": "runs/coop",
}
FOLDERS = {"~/": "home/", "/data/": "data/", "/shared/": "shared/"}  # the reader's folders, in the workspace
MAX_EXEMPT = 5


def test_every_documented_command_has_an_entry():
    documented = {command for _, command in documented_commands()}
    assert len(documented) > 40
    missing = sorted(documented - set(STAND_INS))
    assert not missing, f"documented commands the docs test does not run (add them to STAND_INS): {missing}"
    stale = sorted(set(STAND_INS) - documented)
    assert not stale, f"STAND_INS entries no page gives any more: {stale}"
    exempt = sorted(c for c, step in STAND_INS.items() if step.exempt)
    assert len(exempt) <= MAX_EXEMPT, exempt
    assert all(STAND_INS[c].why for c in exempt)


def test_no_unlabelled_block_holds_a_command():
    """A command in a block without a language would escape the test: command blocks say ``bash``."""
    for page in PAGES:
        for language, body in _blocks(page):
            if not language:
                commands = [line for line in _command_lines(body) if COMMAND_START.match(line)]
                assert not commands, f"{page.relative_to(ROOT)}: label this block bash (or text): {commands}"


# ----- the workspace: what the commands name, built when a command first names it -----------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


class Workspace:
    """The folder the commands run in, and the stand-ins they name, each built the first time a command
    names it (a page run alone builds what it needs)."""

    def __init__(self, root: Path, hub: Path):
        self.root, self.hub = root, hub
        self.built: set[str] = set()
        self.done: set[str] = set()  # commands run already (a later page repeating one reuses its output)
        self.background: list[tuple[str, subprocess.Popen]] = []
        self.closers: list = []
        self.demo_output = ""
        self.timings: list[tuple[float, str]] = []  # seconds and command, printed at the end (pytest -s)
        self.env = {
            **os.environ,
            "HF_HUB_CACHE": str(hub),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT / "src"),
        }

    # each: (words in a command that name it, builder)
    def _resources(self):
        return [
            (("runs/demo/", "data/synth/", "data/synth "), self._demo),
            (("data/f30k/", "dataset_flickr30k.json", "data/flickr30k-images", "sim_base.npy"), self._f30k),
            (("data/f30k_small/",), self._f30k_small),
            (("dataset_coco.json",), self._coco_scores),
            (("data/coco/",), self._coco_lavis),
            (("data/f30k_precomp_small",), self._precomp_small),
            (("data/f30k_precomp",), self._precomp),
            (("data/synth_2000",), self._synth_csv),
            (("runs/visa_offline.yaml",), self._visa_offline),
            (("visa_vllm.yaml",), self._visa_vllm),
            (("visa_video.yaml",), self._visa_video),
            (("my_recipe.yaml",), self._my_recipe),
            (("runs/maxsim/",), self._maxsim),
            (("oxford_pets/",), self._pets),
            (("--address auto",), self._ray_head),
        ]

    def need(self, text: str) -> None:
        padded = text + " "
        for words, build in self._resources():
            if build.__name__ not in self.built and any(w in padded for w in words):
                self.built.add(build.__name__)
                build()

    def _demo(self) -> None:
        self.demo_output = self.main(shlex.split(DEMO)[1:])

    def main(self, words: list[str]) -> str:
        """Run ``vlret WORDS`` in this process; its standard output."""
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(words)
        assert code == 0, f"vlret {shlex.join(words)} exited {code}:\n{err.getvalue()[-3000:]}"
        return out.getvalue()

    def _f30k(self) -> None:
        files = stand_ins.flickr_like(self.root / "data" / "f30k")
        shutil.copyfile(files["karpathy"], self.root / "dataset_flickr30k.json")
        (self.root / "data" / "flickr30k-images").symlink_to(files["images"])
        rng = np.random.default_rng(1)
        np.save(self.root / "sim_base.npy", rng.random((5000, 1000), dtype=np.float32))

    def _f30k_small(self) -> None:
        stand_ins.flickr_like(self.root / "data" / "f30k_small", test=6)

    def _coco_scores(self) -> None:
        stand_ins.karpathy_annotations(self.root / "dataset_coco.json", test=5000)
        rng = np.random.default_rng(2)
        np.save(self.root / "my_scores.npy", rng.random((25000, 5000), dtype=np.float32))

    def _coco_lavis(self) -> None:
        files = stand_ins.flickr_like(self.root / "data" / "coco", test=4, train=8, val=4)
        for part in files["lavis"].glob("flickr30k_*.json"):
            part.rename(part.with_name(part.name.replace("flickr30k_", "coco_karpathy_")))

    def _precomp(self) -> None:
        # the 1,000-image protocol scores 5 million pairs: 2 regions and 2-word captions keep SGR's graph small
        sizes = {"train": 8, "dev": 4, "test": 1000}
        stand_ins.precomp(self.root / "data" / "f30k_precomp", 2, 8, sizes, words=2)

    def _precomp_small(self) -> None:
        stand_ins.precomp(self.root / "data" / "f30k_precomp_small", 4, 8, {"train": 8, "dev": 4, "test": 4})

    def _synth_csv(self) -> None:
        import csv

        from vlret.data import load_dataset
        from vlret.data.synth import SynthConfig, write_benchmark

        data = load_dataset(
            write_benchmark(self.root / "data" / "synth_2000", SynthConfig(images=40, seed=5))
        )
        with open(self.root / "data" / "synth_2000_pairs.csv", "w", newline="") as f:
            rows = [
                [item.path, data.captions[c].text, item.split]
                for item, caps in zip(data.items, data.item_to_captions, strict=True)
                for c in caps
            ]
            csv.writer(f).writerows([["image", "caption", "split"], *rows])

    def _visa_offline(self) -> None:
        (self.root / "runs").mkdir(exist_ok=True)
        # the reader's own offline config; 3 candidates and 1 question keep VISA's many rows short here
        (self.root / "runs" / "visa_offline.yaml").write_text("k: 3\nquestions: 1\n")

    def _visa_vllm(self) -> None:
        """The VISA page's own vLLM config, its server addresses swapped for a local stand-in."""
        shown = next(
            body
            for language, body in _blocks(ROOT / "docs" / "methods" / "visa.md")
            if language == "yaml" and "vllm serve" in body
        )
        config = yaml.safe_load(shown)
        models = [config[role]["model"] for role in ("describer", "vqa", "question_generator")]
        url, server = stand_ins.start_chat_server(models)
        self.closers.append(server.shutdown)
        for role in ("describer", "vqa", "question_generator"):
            config[role]["base_url"] = url
        (self.root / "visa_vllm.yaml").write_text(yaml.safe_dump(config))

    def _visa_video(self) -> None:
        (self.root / "visa_video.yaml").write_text("k: 10\nmedia: video\n")

    def _my_recipe(self) -> None:
        """The recipe of the run the page trained just before (``runs/mine``), as that run recorded it."""
        recorded = self.root / "runs" / "mine" / "recipe.json"
        assert recorded.is_file(), "training.md: the first command writes runs/mine"
        (self.root / "my_recipe.yaml").write_text(yaml.safe_dump(json.loads(recorded.read_text())))

    def _maxsim(self) -> None:
        from vlret.data import load_dataset
        from vlret.models import create_model

        self.need("data/synth/")
        captions = [c.text for c in load_dataset(self.root / "data" / "synth" / "dataset.json").captions]
        model = create_model("tiny-cnn", captions=captions, head="maxsim", seed=0)
        model.save(self.root / "runs" / "maxsim" / "checkpoints" / "best" / "model")

    def _pets(self) -> None:
        from vlret.data.synth_classes import SPLIT_FILE, ClassBenchConfig, write_class_benchmark

        counts = {"train": 2, "val": 1, "test": 1}
        split = write_class_benchmark(self.root / "oxford_pets", ClassBenchConfig(per_class=counts))
        split.rename(split.with_name("split_zhou_OxfordPets.json"))
        assert split.name == SPLIT_FILE

    def _ray_head(self) -> None:
        ray = [str(Path(sys.executable).with_name("ray"))]
        started = subprocess.run(
            [*ray, "start", "--head", "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
            capture_output=True, text=True, env=self.env, timeout=180,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr[-2000:]
        self.closers.append(
            lambda: subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=120)
        )

    # ----- running a command

    def resolve(self, command: str, step: Step) -> str:
        text = command
        for old, new in step.swap.items():
            text = text.replace(old, new)
        return text

    def words(self, text: str) -> list[str]:
        words = []
        for word in shlex.split(text):
            word = PLACEHOLDERS.get(word, word)
            for prefix, folder in (*FOLDERS.items(), *((f"{k}/", f"{v}/") for k, v in PLACEHOLDERS.items())):
                if word.startswith(prefix):
                    word = folder + word[len(prefix) :]
            words.append(word)
        return words

    def run(self, command: str, step: Step) -> str:
        """Run one documented command as ``step`` says; its standard output."""
        if step.instead == DEMO:  # the demo is also what later pages read: it runs once
            self.need("runs/demo/")
            return self.demo_output
        printed = ""
        for values in step.also or ({},):  # the tasks of an array, or the one command
            text = self.resolve(step.instead or command, step)
            for old, new in values.items():
                text = text.replace(old, new)
            started = time.perf_counter()
            printed += self._run_words(command, self.words(text), step)
            self.timings.append((time.perf_counter() - started, text))
        return printed

    def _run_words(self, command: str, words: list[str], step: Step) -> str:
        self.need(" ".join(words))
        background = words[-1] == "&"
        if background:
            words = words[:-1]
        if words[0] not in ("vlret", ".venv/bin/vlret"):
            raise AssertionError(f"{command}: no vlret command to run (give the make target's in instead)")
        words = [*words[1:], *step.append]
        if background:
            process = subprocess.Popen([sys.executable, "-m", "vlret.cli", *words], env=self.env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            self.background.append((command, process))
            return ""
        self.wait_background()
        if words[0] == "serve":
            return self.serve(words)
        return self.main(words)

    def wait_background(self) -> None:
        for command, process in self.background:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, (
                f"{command} (in the background) exited {process.returncode}:\n{err[-3000:]}"
            )
        self.background.clear()

    def serve(self, words: list[str]) -> str:
        """Start ``vlret serve`` as a reader does, on a free port; its page and /health must answer."""
        port = _free_port()
        if "--port" in words:
            words[words.index("--port") + 1] = str(port)
        else:
            words += ["--port", str(port)]
        process = subprocess.Popen([sys.executable, "-m", "vlret.cli", *words], env=self.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            for _ in range(600):  # a bound for a broken server (60 s), not a speed requirement
                if process.poll() is not None:
                    raise AssertionError(
                        f"vlret {shlex.join(words)} exited {process.returncode}:\n{process.stderr.read()[-3000:]}"
                    )
                try:
                    if _get(f"http://127.0.0.1:{port}/health") == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                raise AssertionError(f"vlret {shlex.join(words)} did not answer /health in 60 s")
            assert _get(f"http://127.0.0.1:{port}/") == 200
        finally:
            process.terminate()
            process.wait(timeout=60)
        return ""

    def close(self) -> None:
        for seconds, text in sorted(self.timings, reverse=True)[:12]:
            print(f"{seconds:7.1f} s  {text}")
        self.wait_background()
        for close in reversed(self.closers):
            close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, vit_dir, swin_dir, bert_dir):
    """The workspace, with the hub cache and the reader's photos in place."""
    import huggingface_hub.constants

    from hf_tiny import make_clip, make_cross_encoder
    from vlret.data.sample_photos import write_sample_photos

    root = tmp_path_factory.mktemp("docs")
    models = tmp_path_factory.mktemp("docs_models")
    clip = make_clip(models / "clip")
    hub = stand_ins.hub_cache(
        root / ".hub",
        {
            "openai/clip-vit-base-patch32": clip,
            "openai/clip-vit-base-patch16": clip,
            "google/vit-base-patch16-224-in21k": vit_dir,
            "bert-base-uncased": bert_dir,
            "microsoft/swin-base-patch4-window12-384-in22k": swin_dir,
            "BAAI/bge-reranker-v2-m3": make_cross_encoder(models / "reranker", hidden=16),
        },
    )
    for folder in ("home/Pictures", "home/photos", "data/photos", "."):
        write_sample_photos(root / folder)
    shutil.copyfile(root / "home" / "photos" / "cat.png", root / "query.jpg")
    ws = Workspace(root, hub)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: set it here too
        patch.setenv("HF_HUB_CACHE", str(hub))
        patch.setenv("HF_HUB_OFFLINE", "1")
        try:
            yield ws
        finally:
            ws.close()


def _pages_with_commands() -> list[str]:
    return list(dict.fromkeys(page for page, _ in documented_commands()))


@pytest.mark.parametrize("page", _pages_with_commands())
def test_every_command_of_the_page_runs(page, workspace):
    for documented_page, command in documented_commands():
        if documented_page != page or command in workspace.done:
            continue
        step = STAND_INS[command]
        if step.exempt:
            continue
        printed = workspace.run(command, step)
        lines = [" ".join(line.split()) for line in printed.splitlines()]
        for shown in step.shows:
            assert any(line.startswith(shown) for line in lines), (
                f"{command}: no line starts {shown!r}:\n{printed}"
            )
        workspace.done.add(command)
    workspace.wait_background()


def _expected_prints(code: str) -> list[str]:
    """What a block says its prints show: the value before ``:`` in a ``print(...)  # VALUE: why`` comment."""
    return [m.group(1) for m in re.finditer(r"^print\(.*\)\s+#\s*([^:\n]+?)(?::.*)?$", code, re.M)]


@pytest.mark.parametrize("page, code", documented_python(), ids=lambda v: v if v.endswith(".md") else "")
def test_every_python_block_runs(page, code, workspace, capsys):
    workspace.need(code)
    capsys.readouterr()
    exec(compile(code, page, "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out.splitlines()
    expected = _expected_prints(code)
    assert printed[-len(expected) :] == expected if expected else True, (printed, expected)
