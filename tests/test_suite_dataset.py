"""``vlret bench --suite PATH``: the same rows on a user's dataset with the papers' real-data recipes.

The data are tiny and local: a CSV over a small synthetic benchmark's images (so the offline VISA backends,
named in an explicit ``--visa-config``, can read them), a precomp folder of random region features, and
one-layer ViT, Swin and BERT folders standing in for the recipes' hub weights (``--weights``)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vlret.cli import main
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.suite.dataset import RecipeEdits, region_fit
from vlret.suite.rows import DATASET_FAMILIES, EnsembleRow, TrainRow, dataset_rows, with_rerankers

HUB = {
    "vit": "google/vit-base-patch16-224-in21k",  # AVSE
    "swin": "microsoft/swin-base-patch4-window12-384-in22k",  # RVLR
    "bert": "bert-base-uncased",  # both
}


def _write_csv(dataset_json: Path, out: Path) -> Path:
    """The Karpathy JSON's pairs as a CSV (image, caption, split), paths relative to the JSON's folder."""
    images = json.loads(dataset_json.read_text())["images"]
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption", "split"])
        for image in images:
            for sentence in image["sentences"]:
                writer.writerow([f"{image['filepath']}/{image['filename']}", sentence["raw"], image["split"]])
    return out


@pytest.fixture(scope="module")
def dataset_suite(tmp_path_factory, vit_dir, swin_dir, bert_dir):
    from vlret.data.synth import SynthConfig, write_benchmark

    root = tmp_path_factory.mktemp("dataset-suite")
    dataset_json = write_benchmark(root / "synth", replace(SynthConfig(), images=40))
    table = _write_csv(dataset_json, root / "pairs.csv")
    (root / "visa.yaml").write_text("k: 8\nquestions: 2\n")  # the offline backends, named on purpose
    folders = {"vit": vit_dir, "swin": swin_dir, "bert": bert_dir}
    args = [
        "bench",
        "--suite",
        str(table),
        "--media-root",
        str(dataset_json.parent),
        "--steps",
        "1",
        "--weights",
        *(f"{HUB[k]}={folders[k]}" for k in HUB),
        "--set",
        "train.batch_size=8",
        "model.options.image_options.image_size=32",  # the stand-ins' size; SGR's recipe has no such key
        "--visa-config",
        str(root / "visa.yaml"),
        "--data-dir",
        str(root / "data"),
        "--out",
        str(root / "out"),
        "--quiet",
    ]
    assert main(args) == 0
    return root, {k: Path(v).resolve() for k, v in folders.items()}


def _cells(out: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*/seed-0/cell.json")]
    return {r["row"]: r for r in records}


def _recipe(out: Path, record: dict) -> dict:
    return json.loads((Path(record["model"]).parents[2] / "recipe.json").read_text())


def test_a_csv_dataset_runs_every_text_image_row_with_the_real_data_recipes(dataset_suite):
    root, folders = dataset_suite
    out = root / "out"
    summary = json.loads((out / "summary.json").read_text())
    expected = with_rerankers(dataset_rows("f30k"), set(DATASET_FAMILIES))
    assert [e["row"] for e in summary["rows"]] == [r.name for r in expected]
    assert summary["settings"]["families"] == list(DATASET_FAMILIES)  # no video, no prompts
    assert (out / "table.md").read_text().startswith("Text–image retrieval (test split of pairs.csv)")

    cells = _cells(out)
    recipes = {r.name: r.recipe for r in expected if isinstance(r, TrainRow)}
    assert recipes["SGR + VSL"] == "sgr_vsl_f30k" and recipes["AVSE"] == "avse_f30k"
    for name, recipe_name in recipes.items():
        record = cells[name]
        assert record["training"]["recipe"] == recipe_name and record["training"]["steps"] == 1
        recipe = _recipe(out, record)
        assert recipe["train"]["batch_size"] == 8  # --set, in every recipe
        assert recipe["data"]["val_split"] == "val"  # the data's, not the f30k precomp recipes' "dev"
        if record["data"] == "images":
            assert recipe["data"]["format"] == "csv"
            assert Path(recipe["data"]["media_root"]) == root / "synth"
    # --weights put the local folders where the recipes name hub ids; --set only where the key exists
    avse = _recipe(out, cells["AVSE"])["model"]["options"]
    assert avse["image_options"] == {"source": str(folders["vit"]), "image_size": 32}
    assert avse["text_options"]["source"] == str(folders["bert"])
    rvlr = _recipe(out, cells["RVLR stage 1 (ITC + ITM)"])["model"]["options"]
    assert rvlr["image_options"]["source"] == str(folders["swin"])
    # SGR reads grid-box features of the images: the whole image and a 3 x 3 grid, 1,280-d EfficientNet
    sgr = _recipe(out, cells["SGR"])
    assert sgr["model"]["head"]["n_regions"] == 10
    assert sgr["model"]["options"]["image_options"] == {"dim": 1280}

    for record in cells.values():  # a re-ranker starts from exactly its first stage's ranking
        if "first_stage" in record and cells[record["first_stage"]]["family"] != "rvlr":
            first = cells[record["first_stage"]]["metrics"]
            for key, value in record["first_stage_metrics"].items():
                assert value == pytest.approx(first[key]), (record["row"], key)
    visa = cells["SGRAF (SGR + SAF) + VISA"]
    assert visa["costs"]["model_calls"] > 0
    # RVLR's head re-scores every item of a gallery smaller than its k_test (128): 4 test images
    assert cells["RVLR stage 1 (ITC + ITM)"]["costs"]["pairs_per_query"] == 4 + 4


def test_a_dataset_suite_resumes_and_refuses_other_data_in_its_folder(dataset_suite, capsys):
    root, _ = dataset_suite
    out = root / "out"
    table = (out / "table.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/seed-0/cell.json")}
    settings = json.loads((out / "plan.json").read_text())["settings"]
    args = ["bench", "--suite", settings["suite"], "--media-root", settings["media_root"], "--steps", "1"]
    args += ["--weights", *settings["weights"], "--set", *settings["sets"]]
    args += ["--visa-config", settings["visa_config"], "--data-dir", str(root / "data"), "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing ran again
    assert (out / "table.md").read_text() == table

    assert main([*args, "--recipes", "coco", "--out", str(out)]) == 2
    assert "recipes: 'f30k' before, 'coco' now" in capsys.readouterr().err


def _write_lavis(dataset_json: Path, folder: Path) -> Path:
    """The Karpathy JSON as a LAVIS folder: pairs for training, one entry per image elsewhere."""
    folder.mkdir()
    images = json.loads(dataset_json.read_text())["images"]
    for split in ("train", "val", "test"):
        entries = []
        for image in (i for i in images if i["split"] == split):
            path, texts = f"{image['filepath']}/{image['filename']}", [s["raw"] for s in image["sentences"]]
            if split == "train":
                entries += [{"image": path, "caption": t, "image_id": str(image["imgid"])} for t in texts]
            else:
                entries.append({"image": path, "caption": texts})
        (folder / f"pairs_{split}.json").write_text(json.dumps(entries))
    return folder


def test_karpathy_lavis_and_csv_give_the_same_suite(dataset_suite):
    from vlret.suite.run import SuiteSettings, open_dataset

    root, _ = dataset_suite
    media = root / "synth"
    sources = {
        "karpathy": media / "dataset.json",
        "lavis": _write_lavis(media / "dataset.json", root / "lavis"),
        "csv": root / "pairs.csv",
    }
    opened = {}
    for fmt, path in sources.items():
        settings = SuiteSettings(suite=str(path), media_root=str(media), families=list(DATASET_FAMILIES))
        rows, data, notes = open_dataset(settings)
        assert data.images.format == fmt and data.val_split == "val"
        test = data.load("images").split("test")
        opened[fmt] = ([r.name for r in rows], [c.text for c in test.captions], len(test.items), notes)
    assert opened["lavis"] == opened["karpathy"] == opened["csv"]
    assert opened["csv"][2] == 4 and len(opened["csv"][1]) == 20


def _write_precomp(folder: Path, regions: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    words = ["red", "blue", "green", "circle", "square", "triangle", "left", "right"]
    for split, n in (("train", 8), ("dev", 4), ("test", 4)):
        np.save(folder / f"{split}_ims.npy", rng.standard_normal((n, regions, dim)).astype(np.float32))
        lines = [" ".join(rng.choice(words, 4)) for _ in range(5 * n)]
        (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")


def test_a_precomp_folder_runs_the_region_rows_alone_at_its_own_shape(tmp_path):
    precomp = tmp_path / "f30k_precomp"
    precomp.mkdir()
    _write_precomp(precomp, regions=7, dim=24)
    out = tmp_path / "out"
    args = ["bench", "--suite", str(precomp), "--steps", "1", "--set", "train.batch_size=8"]
    assert main([*args, "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    names = [e["row"] for e in summary["rows"]]
    assert names == ["SGR", "SGR + VSL", "SAF", "SAF + VSL", "SGRAF (SGR + SAF)", "SGRAF + VSL"]
    assert any("only SGR and SAF" in note for note in summary["notes"])
    cells = _cells(out)
    recipe = _recipe(out, cells["SAF + VSL"])
    assert recipe["model"]["head"]["n_regions"] == 7  # read from the features, not the recipe's 36
    assert recipe["model"]["options"]["image_options"]["dim"] == 24  # nor its 2,048
    assert recipe["data"]["val_split"] == "dev"  # the precomp layout's name for it
    assert recipe["losses"]["vsl"]["scale"] == 10.0  # the real-data recipe, sgr/saf_vsl_f30k
    ensemble = cells["SGRAF (SGR + SAF)"]["costs"]
    assert ensemble["pairs_per_query"] == 2 * 4  # each member scores the 4 test images


def test_region_rows_need_five_captions_per_image_and_the_same_test_captions_to_be_reranked():
    def dataset(counts: dict[str, list[int]]) -> RetrievalDataset:
        items, captions = [], []
        for split, per_item in counts.items():
            for n, k in enumerate(per_item):
                items.append(Item(f"{split}{n}", f"{split}{n}.png", split))
                captions += [Caption(f"caption {c}", f"{split}{n}") for c in range(k)]
        return RetrievalDataset(items, captions, Path("."))

    fit = region_fit(dataset({"train": [5, 5], "test": [5, 5]}), "test")
    assert (fit.run, fit.rerank, fit.note) == (True, True, None)
    fit = region_fit(dataset({"train": [5, 7], "test": [5, 6]}), "test")  # COCO-like: up to 7
    assert (fit.run, fit.rerank) == (True, False) and "first 5 captions" in fit.note
    fit = region_fit(dataset({"train": [5, 1], "test": [5, 5]}), "test")
    assert (fit.run, fit.rerank) == (False, False) and "some images have 1" in fit.note

    rows = with_rerankers(dataset_rows("coco", regions=True, rerank_regions=False), {"sgraf", "visa"})
    assert [r.name for r in rows] == ["SGR", "SAF", "SGRAF (SGR + SAF)"]
    assert isinstance(rows[2], EnsembleRow) and rows[0].recipe == "sgr_coco"
    rows = dataset_rows("f30k", regions=False)
    assert not any(getattr(r, "data", "") == "precomp" or isinstance(r, EnsembleRow) for r in rows)


def test_recipe_edits_reach_only_the_recipes_that_read_them():
    edits = RecipeEdits({HUB["bert"]: "/w/bert"}, ("model.options.image_options.image_size=32",))
    assert edits.overrides("avse_f30k") == [
        "model.options.text_options.source=/w/bert",
        "model.options.image_options.image_size=32",
    ]
    assert edits.overrides("sgr_f30k") == []  # a word-level bi-GRU and region features: neither key
    assert edits.overrides("rvlr_f30k") == []  # starts from stage 1's saved model
    # a row's own overrides count: the composed towers read no hub weights
    composed = ("model.name=composed", "model.options={image_tower: efficientnet-lite0, text_tower: minilm}")
    assert edits.overrides("rvlr_stage1_f30k", composed) == []


def test_bad_dataset_suites_are_refused_before_anything_runs(tmp_path, capsys):
    precomp = tmp_path / "precomp"
    precomp.mkdir()
    _write_precomp(precomp, regions=3, dim=8)
    out = tmp_path / "out"
    bert_config = tmp_path / "bert"  # a folder transformers can load, for a hub id no recipe here reads
    __import__("transformers").BertConfig(hidden_size=8, num_attention_heads=2).save_pretrained(bert_config)
    base = ["bench", "--suite", str(precomp), "--out", str(out), "--data-dir", str(tmp_path / "data")]
    cases = [
        ([], None, "expected 'synthetic' or a dataset file or folder"),
        (["--methods", "video"], precomp, "synthetic video and class benchmarks only"),
        (["--methods", "sgraf", "visa"], precomp, "VISA on a dataset needs --visa-config"),
        (["--images", "100"], precomp, "--images sizes the synthetic benchmark"),
        (["--weights", f"{HUB['bert']}={bert_config}"], precomp, f"--weights {HUB['bert']}: no recipe"),
        (["--weights", f"{HUB['bert']}={tmp_path}"], precomp, "holds no model transformers can load"),
        (["--set", "train.batchsize=8"], precomp, "no recipe of this suite has the key 'train.batchsize'"),
        (["--set", "train.batch_size"], precomp, "expected KEY=VALUE"),
        (["--weights", "bert"], precomp, "expected HUB_ID=FOLDER"),
        (["--test-split", "dev"], precomp, "checkpoints are chosen on it"),
        (["--test-split", "testall"], precomp, "the suite needs the splits 'testall'"),
    ]
    for extra, suite, message in cases:
        args = list(base)
        args[2] = str(suite or tmp_path / "missing")
        assert main([*args, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main(["bench", "--recipes", "coco", "--out", str(out)]) == 2  # the synthetic suite
    assert "go with --suite PATH" in capsys.readouterr().err
    assert not out.exists()


def test_hub_weights_that_cannot_load_stop_the_suite_before_any_work(dataset_suite, monkeypatch, capsys):
    import vlret.suite.dataset as suite_dataset

    asked = []

    real = suite_dataset._load_hub_config

    def offline(source: str) -> None:  # what transformers raises without the network or a cached copy
        if Path(source).is_dir():
            return real(source)  # a local folder (--weights) loads as it is
        asked.append(source)
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {source}")

    monkeypatch.setattr(suite_dataset, "_load_hub_config", offline)
    root, folders = dataset_suite
    out = root / "no-weights"
    args = ["bench", "--suite", str(root / "pairs.csv"), "--media-root", str(root / "synth")]
    args += ["--methods", "avse", "--steps", "1", "--data-dir", str(root / "data"), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"row 'AVSE': recipe avse_f30k reads '{HUB['vit']}'" in err
    assert f"give --weights {HUB['vit']}=FOLDER" in err and not out.exists()
    # with the image tower's folder given, the text tower's hub id is the one asked for
    asked.clear()
    assert main([*args, "--weights", f"{HUB['vit']}={folders['vit']}"]) == 2
    assert asked == [HUB["bert"]] and f"reads '{HUB['bert']}'" in capsys.readouterr().err
    # --format names the reader: csv reads the pairs as detection did; karpathy refuses them, naming the file
    asked.clear()
    assert main([*args, "--weights", f"{HUB['vit']}={folders['vit']}", "--format", "csv"]) == 2
    assert asked == [HUB["bert"]]
    capsys.readouterr()
    assert main([*args, "--format", "karpathy"]) == 2
    err = capsys.readouterr().err
    assert "pairs.csv: line 1 column 1: malformed JSON" in err and not out.exists()
