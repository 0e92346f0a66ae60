"""VISA on video: the offline backends read a clip's frames and tell its events in order, chat backends are
shown sampled and scaled frames, and the pipeline re-ranks clips from the CLI."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from vlret.data.synth_video import Event, VideoSynthConfig, render_clip
from vlret.data.video import VLMFrames, write_video
from vlret.rerank.backends.base import ChatDescriber, ChatVisualQA
from vlret.rerank.backends.synthetic import (
    Detected,
    RuleQuestionGenerator,
    SyntheticDescriber,
    SyntheticVisualQA,
    track_clip,
)

CFG = VideoSynthConfig(clips=1)


def _clip(tmp_path, name, events):
    return write_video(tmp_path / f"{name}.mp4", render_clip(events, CFG), fps=CFG.fps)


def _seen(colour, shape, x, y):
    return Detected(shape, colour, "large", "plain", 1, 1, x, y)


def test_tracks_become_events_in_the_order_they_happen():
    red = [_seen("red", "circle", x, 0.5) for x in (0.75, 0.6, 0.4, 0.25, 0.25, 0.25)]
    # a blue square absent from the first four frames; a green star standing still; a yellow one leaving
    frames = [
        (red[n],)
        + ((_seen("blue", "square", 0.3, 0.3),) if n >= 4 else ())
        + (_seen("green", "diamond", 0.7, 0.7),)
        + ((_seen("yellow", "triangle", 0.2, 0.8),) if n < 1 else ())
        for n in range(6)
    ]
    events = track_clip(frames)
    assert [e.phrase() for e in events] == [
        "a yellow triangle disappears",  # placed at 0.5
        "a red circle moves left",  # half-way (0.5) is first passed in frame 2
        "a blue square appears",  # placed at 3.5
        "a green diamond is there",
    ]


def test_a_shape_misread_in_some_frames_is_one_track_named_by_most_frames():
    frames = [(_seen("red", "square" if n != 2 else "circle", 0.2 + 0.1 * n, 0.5),) for n in range(6)]
    assert [e.phrase() for e in track_clip(frames)] == ["a red square moves right"]


def test_the_offline_describer_tells_a_clip_from_its_reverse(tmp_path):
    forward = _clip(tmp_path, "forward", [Event("red", "circle", "moves", "left", (0.75, 0.3))])
    two = _clip(
        tmp_path,
        "two",
        [
            Event("blue", "square", "appears", None, (0.3, 0.7)),
            Event("red", "circle", "moves", "right", (0.25, 0.3)),
        ],
    )
    describer = SyntheticDescriber(frames=VLMFrames(fps=8))
    assert describer.describe(forward) == "A grey clip: a red circle moves left."
    assert describer.describe(two) == "A grey clip: a blue square appears, then a red circle moves right."
    vqa = SyntheticVisualQA(frames=VLMFrames(fps=8))
    assert vqa.answer(two, "What does the red circle do?", "1. red circle") == "The red circle moves right."
    assert (
        vqa.answer(two, "Is there a blue square in the video?", "1. blue square")
        == "Yes, a blue square appears."
    )
    assert vqa.answer(two, "What does the green star do?", "1. green diamond") == "Uncertain"
    questions = RuleQuestionGenerator("video").generate("a red circle moves left", 3)
    assert "1. What does the red circle do?" in questions and "in the video?" in questions


class FakeChat:
    id = "fake"

    def __init__(self):
        self.shown = []

    def chat(self, prompt, images=(), max_tokens=512, temperature=0.0):
        self.shown.append((prompt, list(images)))
        return " a reply "


def test_chat_backends_see_sampled_scaled_frames_of_a_video(tmp_path):
    clip = write_video(tmp_path / "c.mp4", [np.full((64, 64, 3), 8 * k, np.uint8) for k in range(20)], fps=10)
    image = tmp_path / "i.png"
    Image.new("RGB", (8, 8)).save(image)
    chat = FakeChat()
    frames = VLMFrames(fps=3, max_frames=32, max_pixels=1000)
    describer = ChatDescriber(chat, "video", frames=frames)
    assert describer.describe(clip) == "a reply"
    prompt, shown = chat.shown[-1]
    assert "video" in prompt
    # 2 s at 3 fps: times 0, 1/3, ..., 5/3 -> 6 frames; 64 x 64 = 4096 px scaled by sqrt(1000 / 4096) -> 31 x 31
    assert len(shown) == 6 and all(f.size == (31, 31) for f in shown)
    # frame k is grey 8 k; time n/3 s shows frame ceil(10 n / 3 - 0.5): 0, 3, 7, 10, 13, 17
    greys = [round(np.asarray(f).mean() / 8) for f in shown]
    assert greys == [0, 3, 7, 10, 13, 17]
    ChatVisualQA(chat, "video", frames=VLMFrames(fps=3, max_frames=4)).answer(clip, "q?", "k")
    assert len(chat.shown[-1][1]) == 4
    ChatVisualQA(chat, "image", frames=frames).answer(image, "q?", "k")
    assert chat.shown[-1][1] == [image]
    assert describer.id.endswith(":fps3x32px1000")


def test_frames_travel_as_jpeg_data_urls():
    from vlret.rerank.backends.openai_http import image_data_url

    url = image_data_url(Image.new("RGB", (10, 6), (200, 10, 10)))
    head, data = url.split(",", 1)
    assert head == "data:image/jpeg;base64"
    decoded = Image.open(io.BytesIO(base64.b64decode(data)))
    assert decoded.format == "JPEG" and decoded.size == (10, 6)


def test_visa_re_ranks_clips_from_the_cli(tmp_path, monkeypatch, capsys):
    from vlret.cli import main
    from vlret.data import load_dataset
    from vlret.data.synth_video import write_video_benchmark

    monkeypatch.setenv("VLRET_CACHE", str(tmp_path / "cache"))
    data = write_video_benchmark(tmp_path / "clips", VideoSynthConfig(clips=60))
    split = load_dataset(data).split("test")
    # a base retriever that knows nothing: random scores
    scores = np.random.default_rng(0).normal(size=(len(split.captions), len(split.items))).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    (tmp_path / "visa.yaml").write_text("k: 6\nmedia: video\nvideo_frames: {fps: 8}\n")
    args = ["rerank", "visa", "--scores", str(tmp_path / "s.npy"), "--data", str(data), "--config"]
    assert main([*args, str(tmp_path / "visa.yaml"), "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    base_r1 = float(np.mean(np.argmax(scores, axis=1) == split.caption_to_item))
    assert result["metrics"]["base"]["t2i_r1"] == pytest.approx(base_r1)
    # the descriptions and answers tell what happens in each clip; a base that knows nothing gains a lot
    assert result["metrics"]["visa"]["t2i_r1"] > base_r1 + 0.2
    assert result["data"]["media"] == "video"
