"""The synthetic video benchmark: captions, motion and timing read back from the written files, the
reversals that mean pooling cannot tell apart, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlret.data import load_dataset
from vlret.data.synth_video import Event, VideoSynthConfig, captions_for, render_clip, write_video_benchmark
from vlret.data.video import FrameSampling, decode_frames, load_video_frames, probe, write_video

CFG = VideoSynthConfig(clips=10, frames=16, fps=8)
RED = np.array([220, 40, 40])


def _red_centroid(frame) -> tuple[float, float] | None:
    pixels = np.asarray(frame).astype(int)
    mask = np.abs(pixels - RED).sum(-1) < 60
    if mask.sum() < 5:
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_captions_say_the_events_in_order():
    left = Event("red", "circle", "moves", "left", (0.75, 0.5))
    appears = Event("blue", "square", "appears", None, (0.3, 0.3))
    assert captions_for([left]) == ["a red circle moves left", "in this clip a red circle moves left"]
    assert captions_for([left, appears])[0] == "a red circle moves left, then a blue square appears"


def test_a_shape_moving_left_is_where_the_caption_says_in_the_decoded_file(tmp_path):
    event = Event("red", "circle", "moves", "left", (0.75, 0.5))
    path = write_video(tmp_path / "left.mp4", render_clip([event], CFG), fps=CFG.fps)
    frames = decode_frames(path, [(f + 0.5) / CFG.fps for f in range(CFG.frames)])
    xs = [_red_centroid(f)[0] for f in frames]
    # frame f is at t = (f + 1/2) / 16 of the clip: x = (0.75 - 0.5 t) * 64 pixels (the pixel centres are
    # 0.5 off the continuous coordinate)
    expected = [(0.75 - 0.5 * (f + 0.5) / CFG.frames) * CFG.size - 0.5 for f in range(CFG.frames)]
    assert xs == pytest.approx(expected, abs=1.0)
    assert probe(path).duration == pytest.approx(CFG.frames / CFG.fps)


def test_the_second_event_plays_in_the_second_half():
    first = Event("blue", "square", "moves", "down", (0.3, 0.25))
    appears = Event("red", "circle", "appears", None, (0.7, 0.7))
    frames = render_clip([first, appears], CFG)
    # the red circle appears half-way through the second half: t * 2 - 1 >= 0.5, t = (f + 1/2) / 16 >= 3/4,
    # so from frame 12 on
    visible = [_red_centroid(f) is not None for f in frames]
    assert visible == [f >= 12 for f in range(CFG.frames)]


def test_reversed_motion_has_the_same_frames_in_the_opposite_order():
    left = render_clip([Event("red", "circle", "moves", "left", (0.75, 0.4))], CFG)
    right = render_clip([Event("red", "circle", "moves", "right", (0.25, 0.4))], CFG)
    assert all(np.array_equal(a, b) for a, b in zip(left, right[::-1], strict=True))
    # so their frame means, what mean pooling sees of the pixels, are equal
    assert np.array_equal(np.mean(left, 0), np.mean(right, 0))


def test_the_benchmark_is_a_dataset_of_videos_and_is_deterministic(tmp_path):
    first = write_video_benchmark(tmp_path / "a", CFG)
    second = write_video_benchmark(tmp_path / "b", CFG)
    assert first.read_text() == second.read_text()
    data = load_dataset(first)
    assert len(data.items) == 10 and len(data.captions) == 20
    assert {i.split for i in data.items} == {"train", "val", "test"}
    clips = json.loads((tmp_path / "a" / "clips.json").read_text())
    item = data.items[0]
    assert [c.text for c in data.captions if c.item_id == item.id] == captions_for(
        [Event(**{**e, "start": tuple(e["start"])}) for e in clips[0]["events"]]
    )
    a = load_video_frames(tmp_path / "a" / item.path, FrameSampling(frames=4))
    b = load_video_frames(tmp_path / "b" / item.path, FrameSampling(frames=4))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    mtime = first.stat().st_mtime_ns
    assert write_video_benchmark(tmp_path / "a", CFG) == first and first.stat().st_mtime_ns == mtime  # reused
