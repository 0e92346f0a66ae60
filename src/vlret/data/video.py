"""Video files: which frames to take, decoding them with PyAV by seeking, and a disk cache of decoded frames.

Sampling (:func:`sample_times`) is decided on the clip's duration alone, before anything is decoded:

- ``frames=N``: the centres of N equal segments (CLIP4Clip's uniform sampling), ``(k + 1/2) * duration / N``;
- ``fps=F``: every ``1/F`` seconds from 0 (VISA's 3 fps), at most ``max_frames``; a longer clip keeps
  ``max_frames`` of those times spread evenly over it.

Decoding (:func:`decode_frames`) takes, for each wanted time, the first frame whose time reaches it. It
decodes on from the last frame when the wanted time is near (within :data:`FORWARD_SECONDS`, or the largest
keyframe interval seen) and otherwise seeks to the keyframe before it, so a 5-minute clip costs a few GOPs
per frame, not the whole file, and a short one is decoded once, never twice. A file
that cannot be opened, has no video stream or yields no frame (truncated, corrupt, audio only) raises
:class:`DataError` naming it. A wanted time past the last decodable frame takes the last frame, so a clip
whose container overstates its duration still gives N frames.

:class:`FrameCache` keeps decoded frames on disk, keyed by the hash of the file's whole content and the
sampling, so a renamed copy hits the cache and an edited file misses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlret.data._io import file_digest
from vlret.data.image_files import load_image
from vlret.errors import ConfigError, DataError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg")


def is_video_path(path: str | Path) -> bool:
    name = os.path.basename(str(path))  # string work: called once per file of a collection
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in VIDEO_SUFFIXES


#: the most frames a clip is sampled to: 256 frames of 224 x 224 pixels are 150 MB of float32 per clip (the
#: papers' recipes take 12 to 64); a larger count is a typo, and would exhaust memory before it said so
MAX_FRAMES = 256


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a clip: ``frames`` uniformly (the centres of equal segments), or ``fps``
    frames a second capped at ``max_frames`` (evenly spaced picks of them).

    ``pad=True`` is CLIP4Clip's rule (with ``fps=1``; :meth:`clip4clip`): the ``n`` frames at whole seconds
    are picked by ``linspace(0, n - 1, max_frames)`` *truncated* to integers, and a clip with fewer than
    ``max_frames`` frames keeps all of them and is padded to ``max_frames`` with masked frames
    (:func:`stack_clip`). Without ``pad`` the picks are rounded and a short clip has fewer frames.
    """

    frames: int | None = 8
    fps: float | None = None
    max_frames: int = 32
    pad: bool = False
    #: only frames at or before this second (DiDeMo's released loader reads seconds 0 to 31); None: all
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.fps is None):
            raise ConfigError("frame sampling: give exactly one of frames (uniform) or fps")
        if self.frames is not None and not 1 <= self.frames <= MAX_FRAMES:
            raise ConfigError(f"frame sampling: frames must be 1 to {MAX_FRAMES}, not {self.frames}")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"frame sampling: fps must be positive, not {self.fps}")
        if not 1 <= self.max_frames <= MAX_FRAMES:
            raise ConfigError(f"frame sampling: max_frames must be 1 to {MAX_FRAMES}, not {self.max_frames}")
        if self.pad and self.fps is None:
            raise ConfigError("frame sampling: pad (CLIP4Clip's rule) goes with fps sampling")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise ConfigError(f"frame sampling: max_seconds must be >= 0, not {self.max_seconds}")

    @classmethod
    def clip4clip(cls, max_frames: int = 12, max_seconds: float | None = None) -> FrameSampling:
        """CLIP4Clip's sampling: one frame a second, ``max_frames`` of them picked evenly, short clips padded."""
        return cls(frames=None, fps=1.0, max_frames=max_frames, pad=True, max_seconds=max_seconds)

    def key(self) -> str:
        fields = asdict(self)
        for name in ("pad", "max_seconds"):
            if not fields[name]:
                del fields[name]  # keys written before the option stay valid
        return json.dumps(fields, sort_keys=True)


def sample_times(
    duration: float, sampling: FrameSampling, fps: float | None = None, frame_count: int | None = None
) -> list[float]:
    """The times (seconds) of the frames to take from a clip of ``duration`` seconds (``fps`` frames a
    second, ``frame_count`` of them, when known: CLIP4Clip's rule counts frames, not seconds)."""
    if not duration > 0:
        return [0.0]
    if sampling.frames is not None:
        n = sampling.frames
        return [(k + 0.5) * duration / n for k in range(n)]
    if sampling.pad and fps:
        times = _clip4clip_times(duration, sampling, fps, frame_count)
    else:
        step = 1.0 / sampling.fps
        count = max(1, math.ceil(duration / step - 1e-9))  # the frames at 0, step, 2 step, ... before the end
        times = [k * step for k in range(count)]
        if sampling.max_seconds is not None:
            times = [t for t in times if t <= sampling.max_seconds + 1e-9] or [0.0]
    if len(times) > sampling.max_frames:
        picks = np.linspace(0, len(times) - 1, sampling.max_frames)
        picks = picks.astype(int) if sampling.pad else picks.round().astype(int)
        times = [times[p] for p in picks]
    return times


def _clip4clip_times(
    duration: float, sampling: FrameSampling, fps: float, frame_count: int | None
) -> list[float]:
    """The candidate frames of CLIP4Clip's extractor, as times: it reads the frame rate as a whole number
    (``int(cap.get(CAP_PROP_FPS))``: 29 at 29.97 fps) and takes frame ``sec * 29 + i`` for each second
    ``sec`` and each of ``sampling.fps`` offsets ``i`` a second apart by ``29 // sampling.fps``, while such a
    frame exists; so it steps 0.968 s, not 1 s, at 29.97 fps. At a whole frame rate this is whole seconds."""
    whole = max(1, int(fps))
    per_second = max(1, int(sampling.fps))
    offsets = list(range(0, whole, max(1, whole // per_second)))[:per_second]
    count = frame_count if frame_count else math.floor(duration * fps + 1e-6)
    last_second = math.inf if sampling.max_seconds is None else math.floor(sampling.max_seconds + 1e-9)
    numbers, second = [], 0
    while second * whole < count and second <= last_second:
        numbers += [second * whole + i for i in offsets if second * whole + i < count]
        second += 1
    return [n / fps for n in numbers] or [0.0]


def stack_clip(frames: list[np.ndarray], sampling: FrameSampling | None) -> np.ndarray:
    """A clip's transformed frames ``[F, 3, H, W]``; with ``sampling.pad``, padded to ``max_frames`` with
    frames of NaN, which :class:`~vlret.models.video.VideoModel` masks out (no decoded frame holds NaN, so
    the mask travels with the pixels through every batch, cache and worker unchanged)."""
    clip = np.stack(frames)
    if sampling is None or not sampling.pad or len(clip) >= sampling.max_frames:
        return clip
    padding = np.full((sampling.max_frames - len(clip), *clip.shape[1:]), np.nan, dtype=clip.dtype)
    return np.concatenate([clip, padding])


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    fps: float
    frames: int | None  # as the container states it (may be missing or wrong)
    width: int
    height: int


def _open(path: Path, record: str | None):
    import av

    if not path.is_file():
        raise DataError(path, record, "video file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(path, record, f"cannot open video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise DataError(path, record, "no video stream (an audio-only or empty file?)")
    return container


def _fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0) or 25.0


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds (av.time_base)
    return (stream.frames or 0) / _fps(stream)


def probe(path: str | Path, record: str | None = None) -> VideoInfo:
    """Duration, frame rate, frame count and size, from the container's headers (nothing decoded)."""
    with _open(Path(path), record) as container:
        stream = container.streams.video[0]
        duration = _duration(container, stream)
        return VideoInfo(duration, _fps(stream), stream.frames or None, stream.width, stream.height)


def check_video(path: str | Path, record: str | None = None) -> None:
    """Raise :class:`DataError` unless the file opens, has a video stream and a frame decodes at its start
    and at its end (before a long job starts, rather than half-way through it)."""
    path = Path(path)
    with _open(path, record) as container:
        duration = _duration(container, container.streams.video[0])
        if duration > 0:
            _decode(container, [0.0, duration], path, record)
            return
    _decode_forward(path, FrameSampling(frames=2), record)  # no duration stated: read it through


def decode_frames(path: str | Path, times: list[float], record: str | None = None) -> list[Image.Image]:
    """RGB frames at ``times`` (seconds, ascending): for each, the first frame shown at or after it."""
    path = Path(path)
    with _open(path, record) as container:
        return _decode(container, times, path, record)


def load_video_frames(
    path: str | Path, sampling: FrameSampling, record: str | None = None
) -> list[Image.Image]:
    """The sampled RGB frames of a video file (see the module docstring); the file is opened once."""
    path = Path(path)
    with _open(path, record) as container:
        stream = container.streams.video[0]
        duration = _duration(container, stream)
        if duration > 0:
            times = sample_times(duration, sampling, _fps(stream), stream.frames or None)
            return _decode(container, times, path, record)
    return _decode_forward(path, sampling, record)


def _decode_forward(path: Path, sampling: FrameSampling, record: str | None) -> list[Image.Image]:
    """The sampled frames of a clip whose container states no duration (a live WebM, a raw stream, a
    picture under a video name): one pass reads the frames' times, a second decodes on to the wanted ones,
    neither seeks (such streams often cannot). Every wanted time gets a frame, the last one past the end."""
    import av

    try:
        with _open(path, record) as container:
            stream = container.streams.video[0]
            fps = _fps(stream)
            times = [
                f.time if f.time is not None else n / fps for n, f in enumerate(container.decode(stream))
            ]
        if not times:
            raise DataError(path, record, "no frame could be decoded (truncated or corrupt video?)")
        step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1 / fps
        wanted = sample_times(times[-1] + step, sampling, fps, len(times))
        picked: list[Image.Image] = []
        with _open(path, record) as container:
            for n, frame in enumerate(container.decode(container.streams.video[0])):
                while len(picked) < len(wanted) and times[n] + step / 2 >= wanted[len(picked)]:
                    picked.append(frame.to_image())
                if len(picked) == len(wanted):
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(path, record, f"cannot decode video ({exc})") from None
    return picked + picked[-1:] * (len(wanted) - len(picked))


#: wanted frames at most this far (seconds) beyond the last decoded one are reached by decoding on, not by
#: seeking; a longer stretch is also decoded on when the keyframes seen so far are further apart than it
FORWARD_SECONDS = 2.0


def _decode(container, times: list[float], path: Path, record: str | None) -> list[Image.Image]:
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    reader = _ForwardReader(container, stream)
    frames: list[Image.Image] = []
    try:
        for t in times:
            frame = reader.frame_at(t)
            if frame is None:  # past the end: the last frame there is (not the one picked before)
                frame = reader.last_image() or _last_frame(container, stream)
            if frame is None:
                break
            frames.append(frame)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(path, record, f"cannot decode video ({exc})") from None
    if not frames:
        raise DataError(path, record, "no frame could be decoded (truncated or corrupt video?)")
    return frames


class _ForwardReader:
    """Frames at ascending times, by decoding on from the last one or by seeking, whichever decodes less.

    A seek lands on the keyframe before the wanted time, which saves decoding only when that keyframe lies
    beyond the frame decoded last: likely when the stretch to the wanted time is longer than the largest
    keyframe interval seen (and than :data:`FORWARD_SECONDS`, before one is seen)."""

    def __init__(self, container, stream):
        self.container, self.stream = container, stream
        self.slack = 0.5 / float(stream.average_rate or 25)  # timestamps rounded down by half a frame
        self.frames = None  # the decoding generator, after a seek
        self.position: float | None = None  # time of the frame decoded last
        self.last_key: float | None = None
        self.keyframe_gap = 0.0
        self.last_seen = None  # the frame decoded last: the stream's last one once the decoding has ended

    def last_image(self) -> Image.Image | None:
        """The stream's last frame, once :meth:`frame_at` has decoded to the end (None before)."""
        return None if self.last_seen is None else self.last_seen.to_image()

    def frame_at(self, t: float) -> Image.Image | None:
        """The first frame shown at or after ``t``, or None past the end."""
        ahead = None if self.position is None else t - self.position
        if self.frames is None or ahead < 0 or ahead > max(FORWARD_SECONDS, self.keyframe_gap):
            self._seek(t)
        for frame in self.frames:
            if frame.key_frame and frame.time is not None:
                if self.last_key is not None:
                    self.keyframe_gap = max(self.keyframe_gap, frame.time - self.last_key)
                self.last_key = frame.time
            self.position = frame.time if frame.time is not None else self.position
            self.last_seen = frame
            if frame.time is None or frame.time + self.slack >= t:
                return frame.to_image()
        return None

    def _seek(self, t: float) -> None:
        stream = self.stream
        target = int(max(0.0, t) / stream.time_base) if stream.time_base else 0
        self.container.seek(target, stream=stream, backward=True, any_frame=False)
        self.frames = self.container.decode(stream)
        self.last_key = None  # the keyframes skipped over are unknown: no interval spans the seek
        self.last_seen = None  # a frame before the seek is not the stream's last


def _last_frame(container, stream) -> Image.Image | None:
    container.seek(0, stream=stream)
    last = None
    for frame in container.decode(stream):
        last = frame
    return None if last is None else last.to_image()


def content_key(path: str | Path, sampling: FrameSampling) -> str:
    """A key of the file's whole content and the sampling: two clips that differ in any byte miss each
    other's entries (a key of the size and the ends alone let clips that differ in the middle collide)."""
    return hashlib.sha256(f"{file_digest(path)}|{sampling.key()}".encode()).hexdigest()[:40]


class FrameCache:
    """Decoded frames on disk (``folder/<key>.npy``, uint8 ``[T, H, W, 3]``), written atomically."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def frames(
        self, path: str | Path, sampling: FrameSampling, record: str | None = None
    ) -> list[Image.Image]:
        if not Path(path).is_file():
            raise DataError(path, record, "video file not found")
        file = self.folder / f"{content_key(path, sampling)}.npy"
        if file.is_file():
            return [Image.fromarray(a) for a in np.load(file)]
        frames = load_video_frames(path, sampling, record)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, np.stack([np.asarray(im.convert("RGB")) for im in frames]))
        os.replace(tmp, file)
        return frames


@dataclass(frozen=True)
class VLMFrames:
    """How a vision-language model sees a clip: ``fps`` frames a second, at most ``max_frames`` of them, each
    scaled down (aspect kept) to at most ``max_pixels`` pixels. VISA's released code gives Qwen2-VL the file
    with ``fps=3`` and ``max_pixels=360*420``; the cap on the count keeps a long clip within a request."""

    fps: float = 3.0
    max_frames: int = 32
    max_pixels: int = 360 * 420

    def frames(self, path: str | Path, record: str | None = None) -> list[Image.Image]:
        sampling = FrameSampling(frames=None, fps=self.fps, max_frames=self.max_frames)
        return [shrink(frame, self.max_pixels) for frame in load_video_frames(path, sampling, record)]


def shrink(image: Image.Image, max_pixels: int) -> Image.Image:
    """``image`` scaled down, aspect kept, to at most ``max_pixels`` pixels (unchanged when already smaller)."""
    area = image.width * image.height
    if area <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / area)
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def default_frame_cache() -> FrameCache | None:
    """The cache of decoded frames under ``$VLRET_CACHE/frames`` (``~/.cache/vlret``); None when
    ``VLRET_FRAME_CACHE=0``. Frames are kept at the file's own size: budget about 230 KB per 320x240 frame."""
    if os.environ.get("VLRET_FRAME_CACHE", "1") == "0":
        return None
    root = Path(os.environ.get("VLRET_CACHE", Path.home() / ".cache" / "vlret"))
    return FrameCache(root / "frames")


def clip_frames(
    path: str | Path, sampling: FrameSampling, record: str | None = None, cache: FrameCache | None = None
) -> list[Image.Image]:
    """The sampled frames of a video (through ``cache`` when given); an image file is a still clip, its one
    picture repeated so that every clip of a uniform sampling has the same number of frames."""
    if not is_video_path(path):
        return [load_image(path, record)] * (sampling.frames or 1)
    if cache is not None:
        return cache.frames(path, sampling, record)
    if not Path(path).is_file():
        raise DataError(path, record, "video file not found")
    return load_video_frames(path, sampling, record)


def write_video(
    path: str | Path,
    frames: list[np.ndarray],
    fps: int = 10,
    codec: str = "libx264",
    keyframe_every: int | None = None,
    crf: int = 12,
    b_frames: int = 0,
) -> Path:
    """Write RGB uint8 frames ``[H, W, 3]`` (even sides) as a video file: H.264 in MP4 by default, playable
    in browsers (``yuv420p``), a keyframe every ``keyframe_every`` frames (default: every second). The
    defaults (``crf`` 12, no B-frames) keep synthetic frames near-lossless; x264's own defaults are 23 and 3.
    Used by the synthetic video benchmark, the tests and the benchmarks."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "g": str(keyframe_every or fps), "bf": str(b_frames)}
        for pixels in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path
