"""Video files: frame sampling by hand, decoding by seeking (checked by frames that encode their index),
bad files, and the frame cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vlret.data import video
from vlret.data.video import (
    FrameCache,
    FrameSampling,
    decode_frames,
    load_video_frames,
    probe,
    sample_times,
    write_video,
)
from vlret.errors import ConfigError, DataError

FPS = 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames at 10 fps; frame k is grey level 10 k, so a decoded frame tells its index."""
    frames = [np.full((32, 48, 3), 10 * k, np.uint8) for k in range(20)]
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=FPS)


def _indices(frames) -> list[int]:
    return [round(float(np.asarray(f).mean()) / 10) for f in frames]


def test_uniform_sampling_takes_segment_centres():
    assert sample_times(2.0, FrameSampling(frames=4)) == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert sample_times(3.0, FrameSampling(frames=1)) == pytest.approx([1.5])


def test_fps_sampling_and_its_cap():
    assert sample_times(1.0, FrameSampling(frames=None, fps=3)) == pytest.approx([0, 1 / 3, 2 / 3])
    # 100 s at 3 fps is 300 times; a cap of 5 keeps times 0, 75, 150, 224, 299 (linspace 0..299, rounded)
    capped = sample_times(100.0, FrameSampling(frames=None, fps=3, max_frames=5))
    assert capped == pytest.approx([0, 75 / 3, 150 / 3, 224 / 3, 299 / 3])
    assert sample_times(0.0, FrameSampling(frames=4)) == [0.0]


def test_sampling_settings_are_checked():
    with pytest.raises(ConfigError, match="exactly one"):
        FrameSampling(frames=4, fps=3)
    with pytest.raises(ConfigError, match="fps must be positive"):
        FrameSampling(frames=None, fps=0)


def test_probe_reads_the_headers(clip):
    info = probe(clip)
    assert (info.duration, info.fps, info.frames, info.width, info.height) == (2.0, 10.0, 20, 48, 32)


def test_uniform_frames_are_the_ones_at_the_segment_centres(clip):
    # centre times 0.25, 0.75, 1.25, 1.75 s at 10 fps: the first frame shown at or after each (allowing half a
    # frame of timestamp rounding) is ceil(10 t - 0.5) = 2, 7, 12, 17
    assert _indices(load_video_frames(clip, FrameSampling(frames=4))) == [2, 7, 12, 17]


def test_seeking_forwards_and_past_the_end(clip):
    assert _indices(decode_frames(clip, [0.0, 0.1, 1.9, 2.5, 9.0])) == [0, 1, 19, 19, 19]


def test_bad_files_name_the_file(tmp_path, clip):
    with pytest.raises(DataError, match="missing.mp4.*not found"):
        load_video_frames(tmp_path / "missing.mp4", FrameSampling())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="junk.mp4.*cannot open video"):
        load_video_frames(junk, FrameSampling())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:600])
    with pytest.raises(DataError, match="truncated.mp4"):
        load_video_frames(truncated, FrameSampling())


def test_an_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "silence.mka"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(DataError, match="silence.mka.*no video stream"):
        load_video_frames(path, FrameSampling())


def test_the_frame_cache_is_keyed_by_content_and_sampling(tmp_path, clip, monkeypatch):
    cache = FrameCache(tmp_path / "cache")
    first = cache.frames(clip, FrameSampling(frames=4))
    calls = []
    real = video.load_video_frames
    monkeypatch.setattr(video, "load_video_frames", lambda *a, **k: calls.append(a) or real(*a, **k))
    copy = shutil.copy(clip, tmp_path / "renamed.mp4")
    again = cache.frames(copy, FrameSampling(frames=4))  # same bytes under another name: a hit
    assert calls == [] and _indices(again) == _indices(first) == [2, 7, 12, 17]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, first, strict=True))
    assert _indices(cache.frames(clip, FrameSampling(frames=2))) == [5, 15]  # other sampling: decoded
    assert len(calls) == 1


def test_near_frames_are_decoded_on_and_far_ones_seeked(clip, tmp_path, monkeypatch):
    seeks = []
    original = video._ForwardReader._seek

    def counting(self, t):
        seeks.append(round(t, 2))
        original(self, t)

    monkeypatch.setattr(video._ForwardReader, "_seek", counting)
    # 2 s clip: every wanted frame is within FORWARD_SECONDS of the one before: one seek, to the first
    assert _indices(load_video_frames(clip, FrameSampling(frames=4))) == [2, 7, 12, 17]
    assert seeks == [0.25]
    # 50 s at 1 fps with a keyframe every 2 s: 12.5 s between wanted frames, so each is a seek
    long = write_video(
        tmp_path / "long.mp4",
        [np.full((32, 48, 3), 5 * k, np.uint8) for k in range(50)],
        fps=1,
        keyframe_every=2,
    )
    seeks.clear()
    frames = load_video_frames(long, FrameSampling(frames=4))
    # times 6.25, 18.75, 31.25, 43.75 s -> frames ceil(t - 0.5) = 6, 19, 31, 44 (grey 5 k)
    assert [round(float(np.asarray(f).mean()) / 5) for f in frames] == [6, 19, 31, 44]
    assert seeks == [6.25, 18.75, 31.25, 43.75]


def test_clips_that_differ_only_in_the_middle_miss_each_others_cache_entries(tmp_path):
    """Two uncompressed clips of the same size whose first and last 256 KiB are equal: only frames 10-19
    differ. Keyed by size and the file's ends they collided, and the second was served the first's frames."""
    grey = [np.full((120, 160, 3), 8 * k, np.uint8) for k in range(30)]
    edited = [
        np.full((120, 160, 3), 250 - 8 * k, np.uint8) if 10 <= k < 20 else f for k, f in enumerate(grey)
    ]
    a = write_video(tmp_path / "a.avi", grey, fps=FPS, codec="rawvideo")
    b = write_video(tmp_path / "b.avi", edited, fps=FPS, codec="rawvideo")
    bytes_a, bytes_b = a.read_bytes(), b.read_bytes()
    ends = 1 << 18
    assert len(bytes_a) == len(bytes_b) and bytes_a != bytes_b
    assert bytes_a[:ends] == bytes_b[:ends] and bytes_a[-ends:] == bytes_b[-ends:]
    cache = FrameCache(tmp_path / "cache")
    sampling = FrameSampling(frames=3)  # segment centres 0.5, 1.5, 2.5 s: frames 5, 15, 25
    means = [[round(float(np.asarray(f).mean()) / 10) for f in cache.frames(p, sampling)] for p in (a, b)]
    assert means == [[4, 12, 20], [4, 13, 20]]  # frame 15: grey 120 in a, 250 - 120 = 130 in b
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_the_cache_key_changes_with_every_keyed_field(tmp_path, clip):
    from vlret.data.video import content_key

    base = content_key(clip, FrameSampling(frames=4))
    assert content_key(shutil.copy(clip, tmp_path / "copy.mp4"), FrameSampling(frames=4)) == base
    others = {
        "frames": content_key(clip, FrameSampling(frames=5)),
        "fps": content_key(clip, FrameSampling(frames=None, fps=2.0)),
        "max_frames": content_key(clip, FrameSampling(frames=4, max_frames=31)),
    }
    edited = tmp_path / "edited.mp4"
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 1
    edited.write_bytes(bytes(data))
    others["content"] = content_key(edited, FrameSampling(frames=4))
    assert all(key != base for key in others.values()), others
    assert len(set(others.values())) == len(others)


def _raw_h264(path, frames):
    """An H.264 elementary stream under a video name: no container, so no duration and no seeking."""
    import av

    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_clips_of_unknown_duration_give_every_sampled_frame(tmp_path):
    from PIL import Image

    from vlret.data.video import check_video

    raw = _raw_h264(tmp_path / "live.mp4", [np.full((32, 48, 3), 10 * k, np.uint8) for k in range(20)])
    assert probe(raw).duration == 0.0  # the stream states none
    # 20 frames: segment centres of 4 segments fall on frames 2, 7, 12, 17, as for a clip with a duration
    assert _indices(load_video_frames(raw, FrameSampling(frames=4))) == [2, 7, 12, 17]
    # a raw stream states no rate either: at FFmpeg's guess of 25 fps its 20 frames last 0.8 s, 2 at 2 fps
    assert _indices(load_video_frames(raw, FrameSampling(frames=None, fps=2.0, max_frames=3))) == [0, 12]
    picture = tmp_path / "picture.mp4"
    Image.new("RGB", (48, 32), (120, 120, 120)).save(picture, format="PNG")
    frames = load_video_frames(picture, FrameSampling(frames=4))
    assert len(frames) == 4 and _indices(frames) == [12] * 4  # a still: its one frame, four times
    check_video(raw)
    check_video(picture)


def test_an_index_of_clips_with_and_without_a_duration_builds(tmp_path):
    from vlret.index import Searcher, build_index
    from vlret.models import create_model

    clips = tmp_path / "clips"
    write_video(clips / "normal.mp4", [np.full((32, 48, 3), 10 * k, np.uint8) for k in range(20)], fps=FPS)
    _raw_h264(clips / "live.mp4", [np.full((32, 48, 3), 200 - 10 * k, np.uint8) for k in range(20)])
    (clips / "broken.mp4").write_bytes(b"not a video at all")
    create_model("tiny-cnn", captions=["a clip"], seed=0).save(tmp_path / "model")
    index = build_index(
        str(tmp_path / "model"),
        tmp_path / "idx",
        videos=clips,
        video={"frames": 4},
        progress=False,
        on_error="skip",
    )
    searcher = Searcher(index)
    assert sorted(item["path"] for item in searcher.items) == ["live.mp4", "normal.mp4"]
    assert [s["file"] for s in json.loads((index / "index.json").read_text())["skipped"]] == ["broken.mp4"]
