"""CLIP4Clip's frame sampling: one frame a second, max_frames of them picked by a truncated linspace, short
clips padded and masked. Expected frames are worked by hand from CLIP4Clip's rule; the masked pooling is
checked against the real frames encoded alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlret.data.video import FrameSampling, clip_frames, sample_times, stack_clip, write_video
from vlret.models import create_model
from vlret.models.video import VideoConfig, VideoModel


@pytest.mark.parametrize(
    "duration, seconds",
    [
        # the frames at 0..20 s (21 of them): linspace(0, 20, 12) = 0, 1.82, 3.64, 5.45, 7.27, 9.09, 10.9,
        # 12.7, 14.5, 16.4, 18.2, 20, truncated as CLIP4Clip's dtype=int does (rounding would give 2, 4, ...)
        (20.5, [0, 1, 3, 5, 7, 9, 10, 12, 14, 16, 18, 20]),
        # exactly 20 s has no frame at 20 s: 0..19, linspace(0, 19, 12) = 0, 1.73, 3.45, 5.18, 6.91, 8.64, ...
        (20.0, [0, 1, 3, 5, 6, 8, 10, 12, 13, 15, 17, 19]),
        # shorter than 12 s: every second's frame, padded later
        (5.0, [0, 1, 2, 3, 4]),
        (0.4, [0]),
    ],
)
def test_clip4clip_picks_these_seconds(duration, seconds):
    assert sample_times(duration, FrameSampling.clip4clip(12)) == [float(s) for s in seconds]


def test_the_other_rules_are_unchanged_and_keep_their_cache_keys():
    # segment centres: 4 frames of a 20 s clip at 2.5, 7.5, 12.5, 17.5 s
    assert sample_times(20.0, FrameSampling(frames=4)) == [2.5, 7.5, 12.5, 17.5]
    # fps without pad rounds its picks: linspace(0, 20, 12)[1] = 1.82 -> 2
    assert sample_times(20.5, FrameSampling(frames=None, fps=1.0, max_frames=12))[:3] == [0.0, 2.0, 4.0]
    assert FrameSampling(frames=8).key() == '{"fps": null, "frames": 8, "max_frames": 32}'
    assert FrameSampling.clip4clip(12).key() != FrameSampling(frames=None, fps=1.0, max_frames=12).key()
    with pytest.raises(Exception, match="pad .* goes with fps"):
        FrameSampling(frames=8, pad=True)


def test_a_short_clip_is_padded_with_masked_frames():
    frames = [np.full((3, 4, 4), k, np.float32) for k in range(5)]
    clip = stack_clip(frames, FrameSampling.clip4clip(12))
    assert clip.shape == (12, 3, 4, 4)
    assert np.array_equal(clip[:5], np.stack(frames)) and np.isnan(clip[5:]).all()
    assert stack_clip(frames, FrameSampling(frames=5)).shape == (5, 3, 4, 4)  # no padding without pad


def test_frames_of_a_real_file_at_whole_seconds(tmp_path):
    # 5.5 s at 4 fps; frame n has brightness 10 n, so the frame at second s is frame 4 s
    frames = [np.full((16, 16, 3), 10 * n, np.uint8) for n in range(22)]
    path = write_video(tmp_path / "clip.mp4", frames, fps=4)
    taken = clip_frames(path, FrameSampling.clip4clip(12))
    assert len(taken) == 6  # seconds 0..5
    brightness = [float(np.asarray(f).mean()) for f in taken]
    assert brightness == pytest.approx([0, 40, 80, 120, 160, 200], abs=3)


@pytest.mark.parametrize("pooling", ["mean", "transformer"])
def test_pooling_ignores_the_padding(pooling):
    torch.manual_seed(0)
    frame_model = create_model("tiny-cnn", captions=["a red circle"])
    model = VideoModel(frame_model, VideoConfig(frames=12, pooling=pooling, sampling_rule="clip4clip")).eval()
    if model.temporal is not None:  # move the output projection off zero, so the transformer matters
        torch.nn.init.normal_(model.temporal.out.weight, std=0.5)
    real = torch.rand(2, 5, 3, 64, 64)
    padded = torch.cat([real, torch.full((2, 7, 3, 64, 64), float("nan"))], dim=1)
    with torch.no_grad():
        pooled = model.encode_images(padded).embeds
        if pooling == "mean":  # independently: the mean of the five frame embeddings
            each = torch.nn.functional.normalize(frame_model.encode_images(real.flatten(0, 1)).embeds, dim=-1)
            expected = each.view(2, 5, -1).mean(dim=1)
        else:  # the same five frames without padding (positions 0..4 either way)
            expected = model.encode_images(real).embeds
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)
    assert model.sampling == FrameSampling.clip4clip(12)


NTSC = 30000 / 1001  # 29.97 frames a second


def test_at_2997_fps_clip4clip_steps_29_frames_as_its_extractor_does():
    """CLIP4Clip's extractor reads fps as int(29.97) = 29 and takes frames sec * 29 while they exist: a
    599-frame clip has 21 candidates (0, 29, ..., 580), not the 20 whole seconds; linspace(0, 20, 12)
    truncated picks candidates 0 1 3 5 7 9 10 12 14 16 18 20, i.e. frames 29 times those."""
    times = sample_times(599 / NTSC, FrameSampling.clip4clip(12), fps=NTSC, frame_count=599)
    assert [round(t * NTSC) for t in times] == [0, 29, 87, 145, 203, 261, 290, 348, 406, 464, 522, 580]


@pytest.mark.parametrize("duration, seconds", [(20.5, 21), (20.0, 20), (5.0, 5)])
def test_at_a_whole_frame_rate_counting_frames_gives_the_whole_seconds(duration, seconds):
    sampling = FrameSampling.clip4clip(64)
    by_frames = sample_times(duration, sampling, fps=30.0, frame_count=int(duration * 30))
    assert by_frames == sample_times(duration, sampling) == [float(s) for s in range(seconds)]


@pytest.mark.parametrize("duration, released, whole", [(37.3, 32, 38), (300.0, 32, 64)])
def test_didemo_reads_seconds_0_to_31_as_its_released_loader(duration, released, whole):
    """start 0, end 31: the seconds 0..31 inclusive, 32 frames (64 allowed); the whole video otherwise."""
    frame_count = int(duration * 30)
    window = sample_times(
        duration, FrameSampling.clip4clip(64, max_seconds=31), fps=30.0, frame_count=frame_count
    )
    assert len(window) == released and window[-1] == 31.0
    assert (
        len(sample_times(duration, FrameSampling.clip4clip(64), fps=30.0, frame_count=frame_count)) == whole
    )
    from vlret.train import load_recipe
    from vlret.train.recipe import builtin_recipe

    recipe = load_recipe(builtin_recipe("clip4clip_didemo"), [])
    assert recipe.model.video["max_seconds"] == 31 and recipe.train.batch_size == 128


def test_a_wanted_time_past_the_last_frame_gets_the_last_frame(tmp_path):
    """150 frames at 29.97 fps (the container says 5.005 s; the last frame is at 4.9716 s), one frame a
    second: times 0..5 s take frames 0, 30, 60, 90, 120 and, past the end, the last one, 149 (the decoder
    used to repeat the frame picked before, 120)."""
    from fractions import Fraction

    from vlret.data.video import load_video_frames

    frames = [np.full((32, 32, 3), 50 + k, np.uint8) for k in range(150)]
    path = write_video(tmp_path / "ntsc.mp4", frames, fps=Fraction(30000, 1001), keyframe_every=30)
    got = load_video_frames(path, FrameSampling(frames=None, fps=1.0, max_frames=32))
    levels = [round(float(np.asarray(im).mean())) - 50 for im in got]
    assert len(levels) == 6
    for level, want in zip(levels, [0, 30, 60, 90, 120, 149], strict=True):
        assert abs(level - want) <= 1, levels  # near-lossless H.264: a grey level off by one at most
