"""A synthetic classification benchmark for prompt learning: one object per image, labelled by its colour
and shape ("red circle"), written in CoOp's layout (class folders and a ``split_zhou_SynthShapes.json``).

The 24 compositions (6 colours x 4 shapes) are labelled so that CoOp's base-to-new split (the first half of
the labels is *base*) holds every colour and every shape in both halves, but each composition in only one:
the new classes are unseen *compositions* of seen words. Objects vary in size, texture, cell and jitter, with
pixel noise; a second object of another composition appears in ``multi_object_rate`` of the images (the
label is the first, larger object). Seeded per image: the same arguments give byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlret.data._io import write_json
from vlret.data.synth import COLOURS, SHAPES, Scene, SceneObject, SynthConfig, render
from vlret.errors import ConfigError

SPLIT_FILE = "split_zhou_SynthShapes.json"


def compositions() -> list[str]:
    """Class names in label order: base first. Composition ``(colour i, shape j)`` is base when
    ``(i + j) % 2 == 0``, so each colour has 2 base shapes and each shape 3 base colours."""
    colours = list(COLOURS)
    pairs = [(i, j) for i in range(len(colours)) for j in range(len(SHAPES))]
    base = [p for p in pairs if sum(p) % 2 == 0]
    new = [p for p in pairs if sum(p) % 2 == 1]
    return [f"{colours[i]} {SHAPES[j]}" for i, j in base + new]


@dataclass
class ClassBenchConfig:
    per_class: dict[str, int] | None = None  # images per class in each split
    seed: int = 0
    size: int = 64
    multi_object_rate: float = 0.3

    def __post_init__(self) -> None:
        for split, count in self.counts().items():
            if count < 1:
                raise ConfigError(f"{split}: images per class must be at least 1, not {count}")

    def counts(self) -> dict[str, int]:
        return self.per_class or {"train": 40, "val": 8, "test": 20}


def _image(rng: np.random.Generator, label: str, cfg: ClassBenchConfig, others: list[str]):
    colour, shape = label.split(" ")
    cells = rng.choice(9, size=2, replace=False)
    texture = str(rng.choice(("plain", "striped", "dotted")))
    main = SceneObject(shape, colour, "large", texture, int(cells[0]) // 3, int(cells[0]) % 3)
    objects = [main]
    if rng.random() < cfg.multi_object_rate:
        other_colour, other_shape = str(rng.choice(others)).split(" ")
        objects.append(
            SceneObject(other_shape, other_colour, "small", "plain", int(cells[1]) // 3, int(cells[1]) % 3)
        )
    return render(Scene(tuple(objects)), rng, SynthConfig(images=10, size=cfg.size, difficulty=0.1))


def write_class_benchmark(out: str | Path, cfg: ClassBenchConfig | None = None) -> Path:
    """Write the images under ``out/images/<split>/<class>/`` and the split file; returns its path."""
    cfg = cfg or ClassBenchConfig()
    out = Path(out)
    names = compositions()
    split: dict[str, list] = {}
    for s_index, (name, count) in enumerate(cfg.counts().items()):
        entries = []
        for label, classname in enumerate(names):
            others = [n for n in names if n != classname]
            for k in range(count):
                rng = np.random.default_rng([cfg.seed, s_index, label, k])
                rel = f"{name}/{classname.replace(' ', '_')}/{k:04d}.png"
                path = out / "images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                _image(rng, classname, cfg, others).save(path)
                entries.append([rel, label, classname])
        split[name] = entries
    write_json(out / SPLIT_FILE, split)
    return out / SPLIT_FILE
