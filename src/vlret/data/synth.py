"""A deterministic synthetic image-caption benchmark that is hard enough to tell methods apart.

Each image is a scene of several objects with a shape, colour, size and texture, placed in a 3 x 3 grid of
cells (so positions and pairwise relations are well defined). Each image gets 5 captions of varying length
that mention only some of the objects: a full description of one object, a relation between two, a count, a
position, or a short list. The test split also holds near-duplicate distractors: copies of a test scene with one
attribute of one object changed, so only captions that mention that object tell the two apart.

``difficulty`` (0..1) raises the number of objects, pixel noise, how often captions leave out size and texture,
and the share of test scenes that get a distractor. Everything is drawn from ``numpy.random.default_rng`` seeded
per image, so the same arguments always give byte-identical files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlret.data._io import read_json, write_json, written_with
from vlret.data.karpathy import write_karpathy
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import ConfigError, DataError

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "dotted")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
SCENE_GRID = 3  # objects are placed in a 3 x 3 grid of cells
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    texture: str
    row: int  # grid cell, 0..2
    col: int

    def phrase(self, with_size: bool = True, with_texture: bool = True) -> str:
        words = []
        if with_size:
            words.append(self.size)
        if with_texture and self.texture != "plain":
            words.append(self.texture)
        words += [self.colour, self.shape]
        return " ".join(words)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]


@dataclass
class SynthConfig:
    """Generator settings; written next to the data so a later run can tell whether the cache matches."""

    # Defaults calibrated so that the demo's tiny dual encoder (about 5 minutes on 2 cores) lands at
    # text->image R@1 between 20% and 60% on the 500-image test split (see the demo in docs/getting-started.md).
    images: int = 5000
    seed: int = 0
    size: int = 64
    difficulty: float = 0.1
    split_fractions: dict[str, float] = field(default_factory=lambda: dict(SPLIT_FRACTIONS))

    def __post_init__(self) -> None:
        if self.images < 10:
            raise ConfigError(
                f"images must be at least 10 (train, val and test each need some), not {self.images}"
            )
        if not 0.0 <= self.difficulty <= 1.0:
            raise ConfigError(f"difficulty must be in [0, 1], not {self.difficulty}")
        if self.size < 32:
            raise ConfigError(f"size must be at least 32 pixels, not {self.size}")

    @property
    def max_objects(self) -> int:
        return 2 + round(3 * self.difficulty)  # 2..5

    @property
    def noise(self) -> float:
        return 4.0 + 16.0 * self.difficulty

    @property
    def terse_caption_rate(self) -> float:
        """How often an object phrase leaves out size and texture."""
        return 0.2 + 0.5 * self.difficulty

    @property
    def distractor_rate(self) -> float:
        return 0.25 + 0.5 * self.difficulty


# ----- scenes ---------------------------------------------------------------------------------------------


def random_object(rng: np.random.Generator, row: int, col: int) -> SceneObject:
    return SceneObject(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(list(COLOURS))),
        size=str(rng.choice(SIZES)),
        texture=str(rng.choice(TEXTURES)),
        row=row,
        col=col,
    )


def random_scene(rng: np.random.Generator, cfg: SynthConfig) -> Scene:
    n = int(rng.integers(2, cfg.max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    objects = [random_object(rng, int(c) // 3, int(c) % 3) for c in cells]
    if n >= 3 and rng.random() < 0.4:
        # Repeat one object's shape and colour so that counting captions ("two red circles") have content.
        src = objects[0]
        objects[1] = replace(objects[1], shape=src.shape, colour=src.colour)
    return Scene(tuple(objects))


def near_duplicate(rng: np.random.Generator, scene: Scene) -> Scene:
    """The same scene with one attribute of one object changed (or two objects' places swapped)."""
    objects = list(scene.objects)
    k = int(rng.integers(len(objects)))
    change = str(rng.choice(["colour", "shape", "texture", "size", "swap"]))
    obj = objects[k]
    if change == "swap":
        j = (k + 1) % len(objects)
        other = objects[j]
        objects[k] = replace(obj, row=other.row, col=other.col)
        objects[j] = replace(other, row=obj.row, col=obj.col)
    else:
        choices = {"colour": list(COLOURS), "shape": SHAPES, "texture": TEXTURES, "size": SIZES}[change]
        new = str(rng.choice([v for v in choices if v != getattr(obj, change)]))
        objects[k] = replace(obj, **{change: new})
    return Scene(tuple(objects))


# ----- drawing --------------------------------------------------------------------------------------------


def _shape_mask(obj: SceneObject, cx: float, cy: float, radius: float, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = radius
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj.shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=255)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    return mask


def _texture_layer(obj: SceneObject, rgb: tuple[int, int, int], size: int, period: int) -> Image.Image:
    layer = Image.new("RGB", (size, size), rgb)
    if obj.texture == "plain":
        return layer
    dark = tuple(int(v * 0.35) for v in rgb)
    draw = ImageDraw.Draw(layer)
    if obj.texture == "striped":
        for x in range(-size, size, period):
            draw.line([(x, 0), (x + size, size)], fill=dark, width=max(1, period // 2))
    else:  # dotted
        dot = max(1, period // 3)
        for y in range(period // 2, size, period):
            for x in range(period // 2, size, period):
                draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=dark)
    return layer


def render(scene: Scene, rng: np.random.Generator, cfg: SynthConfig) -> Image.Image:
    """Draw a scene; positions, colours and background are jittered by ``rng``."""
    size = cfg.size
    cell = size / 3.0
    grey = int(rng.integers(185, 225))
    canvas = Image.new("RGB", (size, size), (grey, grey, grey))
    period = max(3, size // 16)
    for obj in scene.objects:
        radius = cell * (0.42 if obj.size == "large" else 0.24)
        slack = cell / 2 - radius
        cx = (obj.col + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        cy = (obj.row + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        base = np.asarray(COLOURS[obj.colour]) + rng.integers(-18, 19, size=3)
        rgb = tuple(int(v) for v in np.clip(base, 0, 255))
        mask = _shape_mask(obj, cx, cy, radius, size)
        canvas.paste(_texture_layer(obj, rgb, size, period), (0, 0), mask)
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.normal(0.0, cfg.noise, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ----- captions -------------------------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def position_phrase(row: int, col: int) -> str:
    """Where a grid cell is, in words: "in the top left", "on the right", "in the centre"."""
    if row == 1 and col == 1:
        return "in the centre"
    if row == 1:
        return f"on the {COLUMNS[col]}"
    if col == 1:
        return f"at the {ROWS[row]}"
    return f"in the {ROWS[row]} {COLUMNS[col]}"


def _position(obj: SceneObject) -> str:
    return position_phrase(obj.row, obj.col)


def _relation(a: SceneObject, b: SceneObject) -> str | None:
    if a.col < b.col:
        return "to the left of"
    if a.col > b.col:
        return "to the right of"
    if a.row < b.row:
        return "above"
    if a.row > b.row:
        return "below"
    return None


def _plural(shape: str) -> str:
    return shape + "s"


def captions_for(scene: Scene, rng: np.random.Generator, cfg: SynthConfig) -> list[str]:
    """Five captions, each a different template over a random subset of the objects."""
    objs = list(scene.objects)

    def phrase(o: SceneObject) -> str:
        terse = rng.random() < cfg.terse_caption_rate
        return o.phrase(with_size=not terse and rng.random() < 0.8, with_texture=not terse)

    def single() -> str:
        o = objs[int(rng.integers(len(objs)))]
        return f"{_article(phrase(o))} {_position(o)}" if rng.random() < 0.5 else _article(phrase(o))

    def relation() -> str:
        i, j = rng.choice(len(objs), size=2, replace=False)
        rel = _relation(objs[i], objs[j])
        return f"{_article(phrase(objs[i]))} {rel} {_article(phrase(objs[j]))}"

    def count() -> str:
        groups: dict[tuple[str, str], int] = {}
        for o in objs:
            groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
        (colour, shape), n = max(groups.items(), key=lambda kv: kv[1])
        if n > 1:
            return f"{NUMBER_WORDS[n]} {colour} {_plural(shape)}"
        return f"{NUMBER_WORDS[len(objs)]} shapes including {_article(phrase(objs[int(rng.integers(len(objs)))]))}"

    def listing() -> str:
        k = int(rng.integers(2, len(objs) + 1))
        chosen = [objs[i] for i in sorted(rng.choice(len(objs), size=k, replace=False))]
        parts = [_article(phrase(o)) for o in chosen]
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def position() -> str:
        o = objs[int(rng.integers(len(objs)))]
        return f"{_article(phrase(o))} {_position(o)} of the picture"

    templates = [single, relation, count, listing, position]
    return [templates[k]() for k in rng.permutation(len(templates))]


# ----- the benchmark --------------------------------------------------------------------------------------


def _split_sizes(cfg: SynthConfig) -> dict[str, int]:
    sizes = {s: int(round(cfg.images * f)) for s, f in cfg.split_fractions.items()}
    sizes["train"] += cfg.images - sum(sizes.values())
    return sizes


def generate(cfg: SynthConfig) -> tuple[RetrievalDataset, list[dict]]:
    """Build the records (paths ``images/{split}/{n:05d}.png``) and scene descriptions; draws nothing yet."""
    items: list[Item] = []
    captions: list[Caption] = []
    scenes: list[dict] = []
    n = 0
    for split, count in _split_sizes(cfg).items():
        made = 0
        while made < count:
            rng = np.random.default_rng([cfg.seed, n])
            scene = random_scene(rng, cfg)
            variants = [(scene, None)]
            if split == "test" and made + 1 < count and rng.random() < cfg.distractor_rate:
                variants.append((near_duplicate(rng, scene), f"images/{split}/{n:05d}.png"))
            for k, (sc, twin_of) in enumerate(variants):
                path = f"images/{split}/{n + k:05d}.png"
                items.append(Item(path, path, split))
                texts = captions_for(sc, np.random.default_rng([cfg.seed, n + k, 1]), cfg)
                captions.extend(Caption(t, path) for t in texts)
                scenes.append(
                    {"path": path, "near_duplicate_of": twin_of, "objects": [asdict(o) for o in sc.objects]}
                )
            n += len(variants)
            made += len(variants)
    return RetrievalDataset(items, captions, Path("."), "synthetic", "karpathy"), scenes


def write_benchmark(out: str | Path, cfg: SynthConfig, force: bool = False) -> Path:
    """Write images, ``dataset.json`` (Karpathy format), ``scenes.json`` and ``synth.json`` under ``out``.

    Returns the path of ``dataset.json``. When ``out`` already holds a benchmark made with the same settings
    it is reused as it is (unless ``force``).
    """
    out = Path(out)
    dataset_file, settings_file = out / "dataset.json", out / "synth.json"
    settings = asdict(cfg)
    if not force and written_with(settings_file, settings, dataset_file):
        return dataset_file
    dataset, scenes = generate(cfg)
    for n, (item, scene) in enumerate(zip(dataset.items, scenes, strict=True)):
        path = out / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        objects = tuple(SceneObject(**o) for o in scene["objects"])
        render(Scene(objects), np.random.default_rng([cfg.seed, n, 2]), cfg).save(path)
    write_json(out / "scenes.json", scenes)
    write_karpathy(dataset, dataset_file, name="vlret-synthetic")
    write_json(settings_file, settings)  # last: its presence marks a complete benchmark
    return dataset_file


def read_scenes(scenes_file: Path) -> dict[str, dict]:
    """``scenes.json`` by item path, each scene checked to be a path and objects whose cells lie in the grid."""
    scenes = read_json(scenes_file)
    if not isinstance(scenes, list) or not all(
        isinstance(s, dict) and "path" in s and "objects" in s for s in scenes
    ):
        raise DataError(
            scenes_file, None, 'expected a list of {"path": ..., "objects": [{"row", "col", ...}]}'
        )
    for n, scene in enumerate(scenes):
        for k, obj in enumerate(scene["objects"]):
            cell = [obj.get(key) if isinstance(obj, dict) else None for key in ("row", "col")]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < SCENE_GRID for v in cell):
                raise DataError(
                    scenes_file,
                    f"[{n}] ({scene['path']}) objects[{k}]",
                    f"row and col must be whole numbers in 0..{SCENE_GRID - 1} (the scene's grid cells), "
                    f"got row={cell[0]!r}, col={cell[1]!r}",
                )
    return {s["path"]: s for s in scenes}
