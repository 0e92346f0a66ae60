"""A synthetic video benchmark: short clips of coloured shapes whose captions say what moves, which way and
in what order ("a red circle moves left, then a blue square appears"), written as real H.264 files.

Every clip has one or two *events*, one per half of the clip when there are two: a shape ``moves`` left,
right, up or down across the frame, ``appears`` or ``disappears``. A shape keeps its place after its event (a
moved shape stays where it stopped). The pairs that make the benchmark useful are the reversals: "moves left"
and "moves right" show the same frames in opposite order, and so do "A appears, then B moves" and its mirror
in time, which mean pooling over frames cannot tell apart and a temporal model can.

Clips are seeded per clip: the same settings give the same events, captions and pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlret.data._io import write_json, written_with
from vlret.data.karpathy import write_karpathy
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.data.synth import COLOURS, SHAPES, SceneObject, _shape_mask
from vlret.data.video import write_video
from vlret.errors import ConfigError

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
KINDS = ("moves", "appears", "disappears")


@dataclass(frozen=True)
class Event:
    colour: str
    shape: str
    kind: str  # moves, appears, disappears
    direction: str | None = None  # moves only
    start: tuple[float, float] = (0.5, 0.5)  # the shape's centre before its event (fractions of the side)

    def phrase(self) -> str:
        subject = f"a {self.colour} {self.shape}"
        return f"{subject} moves {self.direction}" if self.kind == "moves" else f"{subject} {self.kind}"

    def end(self) -> tuple[float, float]:
        if self.kind != "moves":
            return self.start
        dx, dy = DIRECTIONS[self.direction]
        return (self.start[0] + 0.5 * dx, self.start[1] + 0.5 * dy)


@dataclass
class VideoSynthConfig:
    clips: int = 600
    seed: int = 0
    size: int = 64  # even, for H.264
    frames: int = 16
    fps: int = 8
    two_event_rate: float = 0.6
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})

    def __post_init__(self) -> None:
        for key, low in (("frames", 2), ("fps", 1), ("size", 16)):
            if getattr(self, key) < low:
                raise ConfigError(f"{key} must be at least {low}, not {getattr(self, key)}")
        if self.size % 2:
            raise ConfigError(f"size must be even (H.264), not {self.size}")


def _random_event(rng: np.random.Generator, taken: set[tuple[str, str]]) -> Event:
    while True:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if (colour, shape) not in taken:
            break
    kind = str(rng.choice(KINDS))
    if kind != "moves":
        start = (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75)))
        return Event(colour, shape, kind, None, start)
    direction = str(rng.choice(list(DIRECTIONS)))
    dx, dy = DIRECTIONS[direction]
    # start on the side it moves away from, so that it crosses half the frame and stays inside
    along = 0.5 - 0.25 * (dx + dy)
    across = float(rng.uniform(0.25, 0.75))
    start = (along, across) if dx else (across, along)
    return Event(colour, shape, kind, direction, start)


def random_clip(rng: np.random.Generator, cfg: VideoSynthConfig) -> list[Event]:
    """One or two events with different shapes."""
    first = _random_event(rng, set())
    if rng.random() >= cfg.two_event_rate:
        return [first]
    return [first, _random_event(rng, {(first.colour, first.shape)})]


def captions_for(events: list[Event]) -> list[str]:
    """Two phrasings of the events in order."""
    phrases = [e.phrase() for e in events]
    if len(phrases) == 1:
        return [phrases[0], f"in this clip {phrases[0]}"]
    return [f"{phrases[0]}, then {phrases[1]}", f"first {phrases[0]} and after that {phrases[1]}"]


def _state(event: Event, progress: float) -> tuple[bool, tuple[float, float]]:
    """(visible, centre) of an event's shape at ``progress`` through its segment (<0 before, >1 after)."""
    p = min(max(progress, 0.0), 1.0)
    if event.kind == "appears":
        return progress >= 0.5, event.start
    if event.kind == "disappears":
        return progress < 0.5, event.start
    (x0, y0), (x1, y1) = event.start, event.end()
    return True, (x0 + p * (x1 - x0), y0 + p * (y1 - y0))


def render_clip(events: list[Event], cfg: VideoSynthConfig) -> list[np.ndarray]:
    """The clip's RGB frames: event ``k`` of ``n`` plays during the ``k``-th ``1/n`` of the frames."""
    frames = []
    for f in range(cfg.frames):
        t = (f + 0.5) / cfg.frames
        canvas = Image.new("RGB", (cfg.size, cfg.size), (235, 235, 235))
        for k, event in enumerate(events):
            visible, (x, y) = _state(event, t * len(events) - k)
            if visible:
                obj = SceneObject(event.shape, event.colour, "large", "plain", 0, 0)
                mask = _shape_mask(obj, x * cfg.size, y * cfg.size, cfg.size * 0.14, cfg.size)
                canvas.paste(COLOURS[event.colour], (0, 0), mask)
        frames.append(np.asarray(canvas))
    return frames


def generate(cfg: VideoSynthConfig) -> tuple[RetrievalDataset, list[dict]]:
    """The records (paths ``videos/{split}/{n:05d}.mp4``) and each clip's events; writes nothing."""
    items, captions, clips = [], [], []
    sizes = {s: int(round(cfg.clips * f)) for s, f in cfg.split_fractions.items()}
    sizes["train"] += cfg.clips - sum(sizes.values())
    n = 0
    for split, count in sizes.items():
        for _ in range(count):
            events = random_clip(np.random.default_rng([cfg.seed, n]), cfg)
            path = f"videos/{split}/{n:05d}.mp4"
            items.append(Item(path, path, split))
            captions.extend(Caption(text, path) for text in captions_for(events))
            clips.append({"path": path, "events": [asdict(e) for e in events]})
            n += 1
    return RetrievalDataset(items, captions, Path("."), "synthetic-video", "karpathy"), clips


def write_video_benchmark(out: str | Path, cfg: VideoSynthConfig | None = None, force: bool = False) -> Path:
    """Write the clips, ``dataset.json`` (Karpathy format), ``clips.json`` and ``synth_video.json`` under
    ``out``; returns the dataset file. A folder holding the same settings is reused unless ``force``."""
    cfg = cfg or VideoSynthConfig()
    least = max(1, math.ceil(1 / min(cfg.split_fractions.values())))  # every split must get a clip
    if cfg.clips < least:
        raise ConfigError(f"clips must be at least {least} (every split needs some), not {cfg.clips}")
    out = Path(out)
    dataset_file, settings_file = out / "dataset.json", out / "synth_video.json"
    settings = asdict(cfg)
    if not force and written_with(settings_file, settings, dataset_file):
        return dataset_file
    dataset, clips = generate(cfg)
    for item, clip in zip(dataset.items, clips, strict=True):
        events = [Event(**{**e, "start": tuple(e["start"])}) for e in clip["events"]]
        write_video(out / item.path, render_clip(events, cfg), fps=cfg.fps)
    write_json(out / "clips.json", clips)
    write_karpathy(dataset, dataset_file, name="vlret-synthetic-video")
    write_json(settings_file, settings)  # last: its presence marks a complete benchmark
    return dataset_file
