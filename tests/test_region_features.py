"""``vlret features regions``: boxes, crops encoded by EfficientNet-Lite0, the precomp layout, resume."""

import json

import numpy as np
import pytest
import torch

import vlret.models.region_features as region_module
from vlret.cli import main
from vlret.data import load_dataset
from vlret.data.image_files import load_image
from vlret.data.transforms import ImageTransform
from vlret.models.backbones.efficientnet_lite import load_pretrained
from vlret.models.region_features import RegionSettings, fill, grid_boxes, scene_boxes, write_region_features


def test_boxes_by_hand():
    # 64 / 3 = 21.33: edges at 0, 21, 43, 64
    assert grid_boxes(64, 64, 3)[:3] == [(0, 0, 64, 64), (0, 0, 21, 21), (21, 0, 43, 21)]
    assert grid_boxes(64, 64, 3)[-1] == (43, 43, 64, 64)
    scene = {"objects": [{"row": 2, "col": 0}, {"row": 0, "col": 1}]}
    assert scene_boxes(64, 64, scene) == [(0, 0, 64, 64), (0, 43, 21, 64), (21, 0, 43, 21)]
    assert fill([(0, 0, 1, 1)] * 3, 5) == [0, 1, 2, 0, 1]
    assert fill([(0, 0, 1, 1)] * 3, 2) == [0, 1]


@pytest.fixture(scope="module")
def net():
    return load_pretrained()


def _pooled(net, image, size=64) -> np.ndarray:
    """EfficientNet-Lite0's pooled feature of one image, squashed to ``size`` and scaled to [-1, 1]."""
    pixels = np.asarray(image.resize((size, size), resample=3), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        return net.feature_map(pixels).mean((2, 3))[0].numpy()


@pytest.fixture(scope="module")
def precomp(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("precomp") / "synth_precomp"
    args = ["features", "regions", "--data", str(synth_data), "--out", str(out), "--boxes", "scene"]
    assert main([*args, "--input-size", "64", "--chunk-size", "16"]) == 0
    return out


def test_cli_writes_the_precomp_layout_from_scenes(precomp, synth_data, net):
    source = load_dataset(synth_data)
    scenes = {s["path"]: s for s in json.loads((synth_data.parent / "scenes.json").read_text())}
    settings = json.loads((precomp / "regions.json").read_text())
    count = 1 + max(len(s["objects"]) for s in scenes.values())
    assert settings["regions"] == count and settings["boxes"] == "scene"
    data = load_dataset(precomp)
    assert data.format == "precomp" and sorted(data.splits) == sorted(source.splits)
    test, original = data.split("test"), source.split("test")
    assert len(test.items) == len(original.items)
    assert [c.text for c in test.captions] == [c.text for c in original.captions]
    ims = np.load(precomp / "test_ims.npy")
    boxes = np.load(precomp / "test_boxes.npy")
    assert ims.shape == (len(test.items), count, 1280) and ims.dtype == np.float32
    item = original.items[3]
    image = load_image(original.media_path(item))
    objects = scenes[item.path]["objects"]
    # region 0 is the whole image; region 1 the first object's cell; then the boxes repeat to fill the count
    np.testing.assert_allclose(ims[3, 0], _pooled(net, image), rtol=1e-4, atol=1e-4)
    row, col = objects[0]["row"], objects[0]["col"]
    cell = grid_boxes(image.width, image.height, 3)[1 + 3 * row + col]
    assert tuple(boxes[3, 1]) == cell
    np.testing.assert_allclose(ims[3, 1], _pooled(net, image.crop(cell)), rtol=1e-4, atol=1e-4)
    n_boxes = 1 + len(objects)
    if n_boxes < count:
        np.testing.assert_array_equal(ims[3, n_boxes], ims[3, 0])


def test_a_region_model_trains_and_evaluates_on_the_written_folder(precomp, tmp_path, capsys):
    code = main(
        [
            "train",
            f"data.path={precomp}",
            f"output_dir={tmp_path / 'run'}",
            "train.max_steps=4",
            "train.batch_size=32",
            "model.name=composed",
            "model.options={image_tower: regions, text_tower: bigru, image_options: {dim: 1280}, "
            "text_options: {hidden: 32, word_dim: 16, min_count: 1}, embed_dim: 32}",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    model_dir = tmp_path / "run" / "checkpoints" / "best" / "model"
    capsys.readouterr()
    assert main(["eval", "--model", str(model_dir), "--data", str(precomp), "--no-cache"]) == 0
    assert "| composed | generic |" in capsys.readouterr().out


def test_a_killed_run_resumes_encoding_only_missing_chunks(synth_data, tmp_path, monkeypatch):
    data = load_dataset(synth_data)
    settings = RegionSettings(boxes="grid", grid=2, input_size=48, chunk_size=2)
    calls = []
    real = region_module._encode_chunk

    def dies_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(region_module, "_encode_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_region_features(data, tmp_path / "a", settings, splits=["test"], progress=False)
    assert sorted(p.name for p in (tmp_path / "a" / ".building").glob("*.npz")) == [
        "test-00000.npz",
        "test-00001.npz",
    ]
    calls.clear()
    monkeypatch.setattr(region_module, "_encode_chunk", lambda *args: calls.append(1) or real(*args))
    write_region_features(data, tmp_path / "a", settings, splits=["test"], progress=False)
    n_chunks = -(-len(data.split("test").items) // 2)
    assert len(calls) == n_chunks - 2  # the two finished chunks were not encoded again
    write_region_features(data, tmp_path / "b", settings, splits=["test"], progress=False)
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "test_ims.npy"), np.load(tmp_path / "b" / "test_ims.npy")
    )
    assert not (tmp_path / "a" / ".building").exists()


def test_bad_settings_and_missing_scenes_are_clear(synth_data, tmp_path, capsys):
    args = ["features", "regions", "--data", str(synth_data), "--out", str(tmp_path / "o")]
    assert main([*args, "--grid", "0"]) == 2
    assert "grid must be at least 1" in capsys.readouterr().err
    assert main([*args, "--boxes", "scene", "--scenes", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    (tmp_path / "s.json").write_text(json.dumps([{"path": "elsewhere.png", "objects": []}]))
    assert main([*args, "--boxes", "scene", "--scenes", str(tmp_path / "s.json"), "--split", "test"]) == 2
    assert "no scene for this image" in capsys.readouterr().err


def test_pooled_reference_matches_the_tower_transform(net, synth_data):
    # the helper above is an independent reading of the tower's preprocessing: check they agree
    image = load_image(load_dataset(synth_data).media_path(load_dataset(synth_data).items[0]))
    transform = ImageTransform(64, 64, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")
    with torch.no_grad():
        tower = net.feature_map(torch.from_numpy(transform(image))[None]).mean((2, 3))[0].numpy()
    np.testing.assert_allclose(tower, _pooled(net, image), rtol=1e-4, atol=1e-4)
