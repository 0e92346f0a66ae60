"""Every vector knows which model made it (issue 35, section 1): a build records its model's fingerprint
(weights and preprocessing, not the folder's name), and a build of other weights never joins its chunks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vlret.cli import main
from vlret.data import load_dataset
from vlret.models import create_model, load_model


@pytest.fixture()
def two_models(synth_data, tmp_path):
    captions = [c.text for c in load_dataset(synth_data).captions]
    for seed in (0, 1):
        create_model("tiny-cnn", captions=captions, seed=seed).save(tmp_path / f"model{seed}")
    return tmp_path / "model0", tmp_path / "model1"


def test_a_fingerprint_follows_the_weights_not_the_folder(two_models, tmp_path):
    first, second = two_models
    shutil.copytree(first, tmp_path / "moved")
    fingerprint = load_model(first).fingerprint()
    assert load_model(tmp_path / "moved").fingerprint() == fingerprint  # the same weights elsewhere
    assert load_model(second).fingerprint() != fingerprint  # other weights
    model = load_model(first)
    with __import__("torch").no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6  # one number changed is another model
    assert model.fingerprint() != fingerprint


def test_a_build_of_other_weights_under_the_same_name_is_refused_and_nothing_is_lost(
    two_models, synth_data, tmp_path, capsys
):
    first, second = two_models
    model = tmp_path / "M"
    shutil.copytree(first, model)
    images = str(synth_data.parent / "images" / "train")
    out = tmp_path / "ix"
    build = [
        "index",
        "build",
        "--model",
        str(model),
        "--images",
        images,
        "--out",
        str(out),
        "--chunk-size",
        "10",
    ]
    assert main([*build, "--shard", "0/2"]) == 0  # half the chunks, as a killed or sharded build leaves them
    chunks = sorted(p.name for p in (tmp_path / "ix.building" / "chunks").iterdir())
    assert chunks
    shutil.rmtree(model)
    shutil.copytree(second, model)  # the folder M now holds other weights
    capsys.readouterr()
    assert main(build) == 2
    err = capsys.readouterr().err
    assert f"{len(chunks)} encoded chunk(s) of another build" in err
    assert load_model(first).fingerprint() in err and load_model(second).fingerprint() in err
    assert sorted(p.name for p in (tmp_path / "ix.building" / "chunks").iterdir()) == chunks  # kept
    assert not out.exists()
    # the way out the message gives: remove the stopped build's folder; the index is then all new weights
    shutil.rmtree(tmp_path / "ix.building")
    assert main(build) == 0
    fresh = tmp_path / "fresh"
    assert main(["index", "build", "--model", str(second), "--images", images, "--out", str(fresh)]) == 0
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), np.load(fresh / "embeddings.npy"), atol=1e-6)
    meta = __import__("json").loads((out / "index.json").read_text())
    assert meta["model_fingerprint"] == load_model(second).fingerprint()


def test_a_build_with_another_model_on_the_same_out_is_refused_while_the_first_keeps_its_chunks(
    two_models, synth_data, tmp_path, capsys
):
    first, second = two_models
    images = str(synth_data.parent / "images" / "train")
    out = str(tmp_path / "ix")
    base = ["index", "build", "--images", images, "--out", out, "--chunk-size", "10"]
    assert main([*base, "--model", str(first), "--shard", "0/2"]) == 0
    assert main([*base, "--model", str(second), "--shard", "1/2"]) == 2
    assert f"model: {str(first)!r} there, {str(second)!r} here" in capsys.readouterr().err
    assert main([*base, "--model", str(first), "--shard", "1/2"]) == 0  # the first build finishes
    assert (tmp_path / "ix" / "index.json").is_file()


def test_a_stopped_build_that_encoded_nothing_is_cleared_without_asking(two_models, synth_data, tmp_path):
    import json

    first, _ = two_models
    work = tmp_path / "ix.building"
    work.mkdir()
    (work / "manifest.json").write_text(json.dumps({"model": "another", "layout": 3}))
    images = str(synth_data.parent / "images" / "train")
    assert (
        main(["index", "build", "--model", str(first), "--images", images, "--out", str(tmp_path / "ix")])
        == 0
    )
    assert not work.exists()


def test_a_transformers_clip_has_a_fingerprint_of_its_weights(tmp_path):
    """The real path: an hf: CLIP (an architecture-true tiny stand-in) read twice gives one fingerprint,
    the same weights in another folder too, and one changed weight another."""
    import torch

    from hf_tiny import make_clip

    folder = make_clip(tmp_path / "clip")
    first = create_model(f"hf:{folder}").fingerprint()
    assert create_model(f"hf:{folder}").fingerprint() == first
    shutil.copytree(folder, tmp_path / "elsewhere")
    assert create_model(f"hf:{tmp_path / 'elsewhere'}").fingerprint() == first
    model = create_model(f"hf:{folder}")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert model.fingerprint() != first
