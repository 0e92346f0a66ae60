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
