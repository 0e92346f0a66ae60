"""End to end: synth -> eval an untrained tiny model (chance level) -> result JSON -> table; the feature cache."""

import json

import numpy as np
import pytest
import torch

from vlret.cli import main
from vlret.data import load_dataset
from vlret.evaluate import evaluate_model
from vlret.evaluate.encode import encode_dataset
from vlret.models import create_model


def test_untrained_model_is_at_chance(synth_data, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(
        [
            "eval",
            "--model",
            "tiny-cnn",
            "--data",
            str(synth_data),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "vlret.result/1" and result["protocol"]["split"] == "test"
    assert result["counts"] == {
        "gallery_items": 6,
        "captions": 30,
        "t2i_queries": 30,
        "i2t_queries": 6,
        "pairs_scored": 180,
    }
    # 6 items: chance R@1 is 1/6; an untrained model must not be far from it (30 queries: allow noise)
    assert result["metrics"]["t2i_r1"] <= 0.5
    assert result["metrics"]["t2i_r10"] == 1.0  # only 6 items: every rank is < 10
    assert set(result) >= {"model", "data", "metrics", "seconds", "vlret_version", "git_revision"}
    assert "| tiny-cnn | generic |" in capsys.readouterr().out


def test_scores_path_and_results_table(synth_data, tmp_path, capsys):
    ds = load_dataset(synth_data).split("test")
    scores = np.full((len(ds.captions), len(ds.items)), 0.1, np.float32)
    scores[np.arange(len(ds.captions)), ds.caption_to_item] = 0.9
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "perfect.json"
    assert (
        main(["eval", "--scores", str(tmp_path / "s.npy"), "--data", str(synth_data), "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["metrics"]["t2i_r1"] == 1.0 and result["metrics"]["rsum"] == 6.0
    capsys.readouterr()
    assert main(["results", "table", str(out), "--by-file"]) == 0
    table = capsys.readouterr().out
    assert "| perfect | generic | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 600.0 |" in table


def test_bad_input_exits_2_with_location(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": ""}]}]}')
    assert main(["data", "stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: images[0] (a.png) sentences[0]" in err
    assert main(["data", "stats", str(bad), "--on-error", "skip", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["skipped"] == 2  # the empty caption, then the image it leaves without captions
    assert [s["record"] for s in stats["skipped_records"]] == [
        "images[0] (a.png) sentences[0]",
        "images[0] (a.png)",
    ]


def test_feature_cache_hit_and_miss(synth_data, tmp_path):
    ds = load_dataset(synth_data).split("test")
    model = create_model("tiny-cnn", captions=[c.text for c in ds.captions])
    first = encode_dataset(model, ds, cache_dir=tmp_path, progress=False)
    second = encode_dataset(model, ds, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.item_embeds, second.item_embeds)
    np.testing.assert_allclose(np.linalg.norm(first.text_embeds, axis=1), 1.0, rtol=1e-5)
    fewer = encode_dataset(model, ds.select(range(3)), cache_dir=tmp_path, progress=False)
    assert not fewer.from_cache and len(fewer.item_embeds) == 3
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # new weights -> new key
    assert not encode_dataset(model, ds, cache_dir=tmp_path, progress=False).from_cache


def test_convert_csv_to_karpathy(tmp_path, capsys):
    src = tmp_path / "a.csv"
    src.write_text("image,caption,split\nx.png,one,test\nx.png,two,test\n")
    assert main(["data", "convert", str(src), "--out", str(tmp_path / "k.json")]) == 0
    doc = json.loads((tmp_path / "k.json").read_text())
    assert [s["raw"] for s in doc["images"][0]["sentences"]] == ["one", "two"]


def test_eval_model_on_skip_lists_missing_image(synth_data, tmp_path):
    import shutil

    root = tmp_path / "b"
    shutil.copytree(synth_data.parent, root)
    ds = load_dataset(root / "dataset.json")
    gone = ds.split("test").items[2]
    (root / gone.path).unlink()
    model = create_model("tiny-cnn", captions=[c.text for c in ds.captions])
    with pytest.raises(Exception, match="image file not found"):
        evaluate_model(model, ds, use_cache=False, progress=False)
    result = evaluate_model(model, ds, on_error="skip", use_cache=False, progress=False)
    assert result["counts"]["gallery_items"] == 5 and result["skipped"][0]["file"].endswith(gone.path)
