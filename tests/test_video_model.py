"""Video models: meanP and the temporal transformer against independent formulations, clips through the
data pipeline (decoded frames by their grey level, the frame cache), augmentation per clip, save / load,
and a video recipe trained and evaluated from the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlret.data import video
from vlret.data.images import visual_inputs
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.data.video import write_video
from vlret.errors import ConfigError, DataError
from vlret.models import create_model, load_model
from vlret.models.video import VideoModel

CAPTIONS = ["a red circle moves left", "a blue square appears", "a green star moves up then down"]


def _model(pooling: str = "mean", frames: int = 4, seed: int = 0) -> VideoModel:
    model = create_model(
        "tiny-cnn", captions=CAPTIONS, seed=seed, video={"frames": frames, "pooling": pooling}
    )
    return model.eval()


def _clips(batch: int = 3, frames: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _enliven(model: VideoModel) -> None:
    """Give the temporal transformer's zero-initialised output projection some weight, as training would."""
    with torch.no_grad():
        model.temporal.out.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_meanp_is_the_average_of_normalised_frame_embeddings():
    model, clips = _model(), _clips()
    expected = torch.stack(
        [
            torch.stack(
                [F.normalize(model.frame_model.encode_images(f[None]).embeds[0], dim=-1) for f in clip]
            ).mean(0)
            for clip in clips
        ]
    )
    assert torch.allclose(model.encode_images(clips).embeds, expected, atol=1e-5)


@torch.no_grad()
def test_meanp_ignores_order_and_the_temporal_model_does_not():
    clips = _clips()
    meanp = _model("mean")
    forward, backward = meanp.encode_images(clips).embeds, meanp.encode_images(clips.flip(1)).embeds
    assert torch.allclose(forward, backward, atol=1e-5)

    temporal = _model("transformer")
    # untrained, it is meanP exactly (its output projection starts at zero)
    assert torch.allclose(temporal.encode_images(clips).embeds, forward, atol=1e-6)
    _enliven(temporal)
    forward, backward = temporal.encode_images(clips).embeds, temporal.encode_images(clips.flip(1)).embeds
    assert (forward - backward).abs().max() > 1e-2


@torch.no_grad()
def test_an_image_is_a_one_frame_clip_and_a_still_clip_pools_to_it():
    model, images = _model(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    one_frame = model.encode_images(images).embeds
    single = F.normalize(model.frame_model.encode_images(images).embeds, dim=-1)
    assert torch.allclose(one_frame, single, atol=1e-6)
    still = images[:, None].expand(-1, 4, -1, -1, -1)
    assert torch.allclose(model.encode_images(still).embeds, single, atol=1e-5)


@torch.no_grad()
def test_save_and_load_keep_the_temporal_weights(tmp_path):
    model = _model("transformer")
    _enliven(model)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert isinstance(loaded, VideoModel) and loaded.config == model.config
    clips = _clips()
    assert torch.allclose(loaded.encode_images(clips).embeds, model.encode_images(clips).embeds, atol=1e-6)
    texts = loaded.tokenize(CAPTIONS)
    assert torch.equal(loaded.encode_texts(texts).embeds, model.encode_texts(texts).embeds)


def test_settings_and_token_heads_are_checked():
    with pytest.raises(ConfigError, match="model.video: unknown key 'frame'"):
        create_model("tiny-cnn", captions=CAPTIONS, video={"frame": 4})
    with pytest.raises(ConfigError, match="pooling must be one of"):
        create_model("tiny-cnn", captions=CAPTIONS, video={"pooling": "max"})
    with pytest.raises(ConfigError, match="token heads"):
        create_model("tiny-cnn", captions=CAPTIONS, video={}, head="maxsim")


@pytest.fixture(scope="module")
def grey_clips(tmp_path_factory):
    """Two 20-frame clips at 10 fps whose frame k is grey level 10 k (+ 5 for the second) and one image."""
    root = tmp_path_factory.mktemp("clips")
    for n in range(2):
        write_video(
            root / f"c{n}.mp4", [np.full((64, 64, 3), 10 * k + 5 * n, np.uint8) for k in range(20)], fps=10
        )
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 200, 200)).save(root / "still.png")
    items = [Item("c0", "c0.mp4", "test"), Item("c1", "c1.mp4", "test"), Item("s", "still.png", "test")]
    captions = [Caption(t, i.id) for t, i in zip(CAPTIONS, items, strict=True)]
    return RetrievalDataset(items, captions, root)


def _grey(pixels: np.ndarray, model: VideoModel) -> np.ndarray:
    """The grey level of each frame, undoing the model's normalisation."""
    mean = np.asarray(model.image_transform.mean).reshape(3, 1, 1)
    std = np.asarray(model.image_transform.std).reshape(3, 1, 1)
    return np.round((pixels * std + mean).mean(axis=(-3, -2, -1)) * 255)


def test_clips_come_through_the_pipeline_frame_by_frame(grey_clips, monkeypatch, tmp_path):
    monkeypatch.setenv("VLRET_CACHE", str(tmp_path))
    model = _model(frames=4)
    pixels = visual_inputs(model, grey_clips, [0, 1, 2])
    assert pixels.shape == (3, 4, 3, 64, 64)
    # uniform 4 of 20 frames at 10 fps: times 0.25, 0.75, 1.25, 1.75 s -> frames 2, 7, 12, 17
    greys = _grey(pixels, model)
    assert np.abs(greys[0] - [20, 70, 120, 170]).max() <= 2
    assert np.abs(greys[1] - [25, 75, 125, 175]).max() <= 2
    assert np.abs(greys[2] - 200).max() <= 1  # the image: a still clip

    # a second pass reads the frame cache and decodes nothing
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(video, "load_video_frames", no_decoding)
    assert np.array_equal(visual_inputs(model, grey_clips, [0, 1, 2]), pixels)


def test_an_image_model_refuses_a_video_naming_it(grey_clips):
    image_model = create_model("tiny-cnn", captions=CAPTIONS)
    with pytest.raises(DataError, match=r"c0\.mp4.*a video, but tiny-cnn encodes images"):
        visual_inputs(image_model, grey_clips, [0])


def test_a_clip_gets_one_crop_for_all_its_frames(tmp_path, monkeypatch):
    from vlret.train.data import PairSource
    from vlret.train.recipe import DataSection

    monkeypatch.setenv("VLRET_CACHE", str(tmp_path))
    # every frame the same picture (a gradient, so that crops differ from the whole)
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    write_video(tmp_path / "still.mp4", [ramp] * 10, fps=10)
    data = RetrievalDataset([Item("v", "still.mp4", "train")], [Caption("a ramp", "v")], tmp_path)
    model = _model(frames=4)
    section = DataSection(crop_scale=[0.2, 0.5], hflip=True, cache_images=True)
    source = PairSource(data, model.image_transform, section, "frames", model.sampling)
    plain = PairSource(data, model.image_transform, DataSection(), "frames", model.sampling)
    for seed in range(3):
        clip = source.pixels(np.array([0]), lambda n, s=seed: np.random.default_rng(s))[0]
        assert all(np.allclose(frame, clip[0], atol=0.05) for frame in clip[1:])
        assert not np.allclose(clip[0], plain.pixels(np.array([0]), None)[0][0], atol=0.05)


def test_a_video_recipe_trains_and_evaluates_from_the_cli(tmp_path, monkeypatch):
    from vlret.cli import main
    from vlret.data.synth_video import VideoSynthConfig, write_video_benchmark

    monkeypatch.setenv("VLRET_CACHE", str(tmp_path / "cache"))
    data = write_video_benchmark(tmp_path / "clips", VideoSynthConfig(clips=40, frames=8))
    run = tmp_path / "run"
    overrides = [
        f"data.path={data}",
        f"output_dir={run}",
        "train.epochs=1",
        "train.batch_size=8",
        "model.video.frames=4",
        "model.options.width=32",
        "model.options.embed_dim=32",
    ]
    assert main(["train", "--recipe", "video_temporal_synth_cpu", *overrides]) == 0
    model = load_model(run / "checkpoints" / "best" / "model")
    assert isinstance(model, VideoModel) and model.config.pooling == "transformer"
    out = tmp_path / "result.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(run / "checkpoints/best/model"),
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    import json

    result = json.loads(out.read_text())
    assert result["data"]["media"] == "video"
    metrics = result["metrics"]
    assert 0.0 <= metrics["t2i_r1"] <= 1.0 and metrics["t2i_medr"] >= 1


def test_an_image_model_evaluates_videos_from_the_cli_with_mean_pooling(grey_clips, tmp_path, monkeypatch):
    import json

    from vlret.cli import main
    from vlret.data.karpathy import write_karpathy

    monkeypatch.setenv("VLRET_CACHE", str(tmp_path / "cache"))
    create_model("tiny-cnn", captions=CAPTIONS, seed=0).save(tmp_path / "image_model")
    data = tmp_path / "data.json"
    write_karpathy(grey_clips, data, name="grey")
    out = tmp_path / "r.json"
    args = [
        "eval",
        "--model",
        str(tmp_path / "image_model"),
        "--data",
        str(data),
        "--media-root",
        str(grey_clips.media_root),
    ]
    assert main([*args, "--split", "test", "--video-frames", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"]["video"] == {
        "frames": 4,
        "pooling": "mean",
        "layers": 2,
        "heads": 4,
        "sampling_rule": "centres",
    }
    assert result["data"]["media"] == "mixed"  # two clips and a still image


@pytest.mark.parametrize("kind", ["tiny-vit", "composed", "hf-clip", "hf-siglip"])
@torch.no_grad()
def test_every_kind_of_image_model_becomes_a_clip_encoder(kind, tmp_path):
    from hf_tiny import make_clip, make_siglip

    if kind == "tiny-vit":
        name, options = "tiny-vit", {"captions": CAPTIONS}
    elif kind == "composed":
        name, options = "composed", {"image_tower": "tiny-vit", "text_tower": "minilm", "embed_dim": 16}
    else:
        name, options = "hf:" + str((make_clip if kind == "hf-clip" else make_siglip)(tmp_path / kind)), {}
    model = create_model(
        name, seed=0, video={"frames": 3, "pooling": "transformer", "heads": 2}, **options
    ).eval()
    assert isinstance(model, VideoModel)
    size = model.image_transform.crop
    clips = torch.randn(2, 3, 3, size, size, generator=torch.Generator().manual_seed(0))
    frames = F.normalize(model.frame_model.encode_images(clips.flatten(0, 1)).embeds.float(), dim=-1)
    expected = frames.view(2, 3, -1).mean(1)  # untrained: exactly meanP
    assert torch.allclose(model.encode_images(clips).embeds, expected, atol=1e-5)
    model.save(tmp_path / "saved")
    loaded = load_model(tmp_path / "saved").eval()
    assert torch.allclose(loaded.encode_images(clips).embeds, expected, atol=1e-5)
    texts = model.tokenize(["a red circle"])
    assert torch.allclose(loaded.encode_texts(texts).embeds, model.encode_texts(texts).embeds, atol=1e-6)


def test_a_bad_clip_is_named_or_skipped_and_listed_by_evaluation(grey_clips, tmp_path, monkeypatch):
    import shutil

    from vlret.errors import DataError as Bad
    from vlret.evaluate.api import evaluate_model

    monkeypatch.setenv("VLRET_CACHE", str(tmp_path / "cache"))
    for name in ("c0.mp4", "c1.mp4"):
        shutil.copy(grey_clips.media_root / name, tmp_path / name)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "c1.mp4").read_bytes()[:600])  # the header's start only
    items = [Item("c0", "c0.mp4", "test"), Item("cut", "cut.mp4", "test"), Item("c1", "c1.mp4", "test")]
    data = RetrievalDataset(items, [Caption(t, i.id) for t, i in zip(CAPTIONS, items, strict=True)], tmp_path)
    model = _model(frames=4)
    with pytest.raises(Bad, match=r"cut\.mp4.*item 'cut'"):
        evaluate_model(model, data, split="test", progress=False, use_cache=False)
    result = evaluate_model(model, data, split="test", progress=False, use_cache=False, on_error="skip")
    assert result["counts"]["gallery_items"] == 2
    assert [s["record"] for s in result["skipped"]] == ["item 'cut'"]


def test_visa_reads_an_image_models_clips_at_the_frames_given(grey_clips, tmp_path, monkeypatch):
    import json

    from vlret.cli import main
    from vlret.data.karpathy import write_karpathy

    monkeypatch.setenv("VLRET_CACHE", str(tmp_path / "cache"))
    create_model("tiny-cnn", captions=CAPTIONS, seed=0).save(tmp_path / "image_model")
    data = tmp_path / "data.json"
    write_karpathy(grey_clips, data, name="grey")
    (tmp_path / "visa.yaml").write_text("k: 2\nquestions: 1\n")
    args = ["rerank", "visa", "--model", str(tmp_path / "image_model"), "--data", str(data)]
    args += [
        "--media-root",
        str(grey_clips.media_root),
        "--split",
        "test",
        "--config",
        str(tmp_path / "visa.yaml"),
    ]
    for frames in (3, 4):
        out = tmp_path / f"run{frames}"
        assert main([*args, "--video-frames", str(frames), "--out", str(out)]) == 0
        model = json.loads((out / "result.json").read_text())["model"]["model"]
        assert (model["name"], model["video"]["frames"]) == ("video:tiny-cnn", frames)
