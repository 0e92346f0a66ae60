"""Options given on the command line that only the functions behind them had been tested with (issue 34,
section 2; ``tests/test_zz_cli_options.py`` lists what no test gives): each run through ``main([...])`` with
its effect checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlret.cli import main
from vlret.data import load_dataset

CSV_OPTIONS = ["--path-column", "file", "--caption-column", "text", "--split-column", "part"]
CSV_OPTIONS += ["--format", "csv", "--encoding", "latin-1", "--on-error", "skip"]


@pytest.fixture(scope="module")
def csv_data(synth_data, tmp_path_factory) -> Path:
    """The synthetic test split as a Latin-1 CSV with its own column names and no split column (``part`` is
    not there): every row falls in the split ``--default-split`` names; paths are relative to the images.
    One more caption of the first image is accented (read only with ``--encoding latin-1``)."""
    data = load_dataset(synth_data).split("test")
    path = tmp_path_factory.mktemp("csv") / "pairs.csv"
    with open(path, "w", newline="", encoding="latin-1") as f:
        rows = [
            [str(it.path), data.captions[c].text]
            for it, caps in zip(data.items, data.item_to_captions, strict=True)
            for c in caps
        ]
        csv.writer(f).writerows([["file", "text"], *rows, [str(data.items[0].path), "un café"]])
    return path


@pytest.fixture(scope="module")
def tiny_model(synth_data, tmp_path_factory) -> Path:
    from vlret.models import create_model

    folder = tmp_path_factory.mktemp("cli_model") / "model"
    captions = [c.text for c in load_dataset(synth_data).captions]
    create_model("tiny-cnn", captions=captions, seed=0).save(folder)
    return folder


def _data_args(csv_data: Path, synth_data: Path, split: str) -> list[str]:
    return [*CSV_OPTIONS, "--default-split", split, "--media-root", str(synth_data.parent)]


def test_data_stats_and_convert_read_a_csv_by_the_columns_named(csv_data, synth_data, tmp_path, capsys):
    test = load_dataset(synth_data).split("test")
    args = [str(csv_data), *_data_args(csv_data, synth_data, "val")]
    assert main(["data", "stats", *args, "--check-media", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert list(stats["splits"]) == ["val"]  # the default split: the CSV has no "part" column
    assert stats["splits"]["val"]["items"] == len(test.items)
    assert main(["data", "convert", *args, "--out", str(tmp_path / "k.json")]) == 0
    back = load_dataset(tmp_path / "k.json", media_root=synth_data.parent)
    assert back.splits == ["val"] and "un café" in [c.text for c in back.captions]


def test_data_stats_check_media_reports_a_missing_image(synth_data, tmp_path, capsys):
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\nnot-there.png,a red circle\n")
    assert main(["data", "stats", str(path), "--check-media"]) == 2
    assert "not-there.png" in capsys.readouterr().err
    assert main(["data", "stats", str(path)]) == 0  # without it the annotations alone are read


def test_eval_reads_a_csv_by_the_columns_named(csv_data, synth_data, tiny_model, tmp_path):
    out = tmp_path / "r.json"
    args = ["eval", "--model", str(tiny_model), "--data", str(csv_data), "--split", "val", "--out", str(out)]
    assert main([*args, *_data_args(csv_data, synth_data, "val"), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["counts"]["gallery_items"] == len(load_dataset(synth_data).split("test").items)


def test_index_build_reads_a_csv_by_the_columns_named(csv_data, synth_data, tiny_model, tmp_path):
    out = tmp_path / "idx"
    args = ["index", "build", "--model", str(tiny_model), "--data", str(csv_data), "--out", str(out)]
    assert main([*args, *_data_args(csv_data, synth_data, "test")]) == 0
    meta = json.loads((out / "index.json").read_text())
    test = load_dataset(synth_data).split("test")
    assert (meta["items"], meta["captions"]) == (len(test.items), len(test.captions) + 1)  # + "un café"


def test_rerank_head_reads_a_csv_and_keeps_k_candidates(csv_data, synth_data, tmp_path):
    from vlret.models import create_model

    model = tmp_path / "maxsim"
    create_model("tiny-cnn", captions=["a red circle"], head="maxsim", seed=0).save(model)
    out = tmp_path / "head.json"
    args = ["rerank", "head", "--model", str(model), "--data", str(csv_data), "--split", "test"]
    args += ["--k", "3", "--direction", "t2i", "--out", str(out), *_data_args(csv_data, synth_data, "test")]
    args += ["--protocol", "generic", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert any((tmp_path / "cache").rglob("*.npy"))  # the features went to --cache-dir
    result = json.loads(out.read_text())
    assert "t2i_r1" in result["metrics"] and "i2t_r1" not in result["metrics"]  # --direction t2i


def test_visa_shards_and_merge_read_a_csv_by_the_columns_named(csv_data, synth_data, tiny_model, tmp_path):
    data = _data_args(csv_data, synth_data, "test")
    out = tmp_path / "visa"
    args = ["rerank", "visa", "--model", str(tiny_model), "--data", str(csv_data), "--split", "test"]
    for shard in ("0/2", "1/2"):
        assert (
            main([*args, *data, "--queries", "4", "--out", str(out), "--shard", shard, "--batch-size", "16"])
            == 0
        )
    assert (
        main(["rerank", "visa-merge", "--data", str(csv_data), "--split", "test", "--out", str(out), *data])
        == 0
    )
    assert len(np.load(out / "reranked.npy")) == 4 and (out / "result.json").is_file()


def test_features_read_a_csv_by_the_columns_named(csv_data, synth_data, tmp_path):
    data = _data_args(csv_data, synth_data, "train")
    regions = tmp_path / "regions"
    args = ["features", "regions", "--data", str(csv_data), "--out", str(regions), "--split", "train"]
    assert (
        main([*args, "--regions", "4", "--backbone", "efficientnet-lite0", "--input-size", "64", *data]) == 0
    )
    arrays = sorted(regions.glob("*_ims.npy"))
    assert arrays and np.load(arrays[0]).shape[1] == 4  # --regions 4 boxes an image
    teacher = tmp_path / "teacher"
    args = ["features", "teacher", "--data", str(csv_data), "--out", str(teacher), "--batch-size", "16"]
    args += ["--split", "train"]
    assert main([*args, "--image-tower", "tiny-vit", "--text-tower", "minilm", *data]) == 0
    manifest = json.loads((teacher / "teacher.json").read_text())
    assert manifest["complete"] and "tiny-vit" in json.dumps(manifest["towers"])
    assert manifest["pairs"] == len(load_dataset(synth_data).split("test").captions) + 1  # every row: train


def test_the_synthetic_class_and_video_benchmarks_take_a_seed_and_force(tmp_path):
    def first_image(split_file: Path) -> bytes:
        entry = json.loads(split_file.read_text())["train"][0]
        return (split_file.parent / "images" / entry[0]).read_bytes()

    small = ["--train", "1", "--val", "1", "--test", "1"]
    assert main(["data", "synth-classes", "--out", str(tmp_path / "c1"), *small, "--seed", "1"]) == 0
    assert main(["data", "synth-classes", "--out", str(tmp_path / "c2"), *small, "--seed", "2"]) == 0
    files = [next((tmp_path / c).glob("split_zhou_*.json")) for c in ("c1", "c2")]
    assert first_image(files[0]) != first_image(files[1])  # another seed draws other images
    args = ["data", "synth-video", "--out", str(tmp_path / "v"), "--clips", "10"]
    assert main([*args, "--seed", "1"]) == 0
    stamp = (tmp_path / "v" / "dataset.json").stat().st_mtime_ns
    assert main([*args, "--seed", "1"]) == 0  # the same clips are there: kept
    assert (tmp_path / "v" / "dataset.json").stat().st_mtime_ns == stamp
    assert main([*args, "--seed", "1", "--force"]) == 0  # written again
    assert (tmp_path / "v" / "dataset.json").stat().st_mtime_ns != stamp


def test_data_synth_takes_its_size_and_difficulty(tmp_path, capsys):
    args = ["data", "synth", "--images", "20", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "a"), "--size", "32", "--difficulty", "0.5"]) == 0
    data = load_dataset(tmp_path / "a" / "dataset.json")
    assert Image.open(data.media_path(data.items[0])).size == (32, 32)
    assert main([*args, "--out", str(tmp_path / "b"), "--size", "32", "--difficulty", "0.0"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--size", "32", "--difficulty", "0.0", "--force"]) == 0
    other = load_dataset(tmp_path / "b" / "dataset.json")
    pixels = [np.asarray(Image.open(d.media_path(d.items[0]))) for d in (data, other)]
    assert not np.array_equal(*pixels)  # another difficulty draws other scenes


def _two_item_data(tmp_path: Path) -> Path:
    """Two images with two captions each, as a Karpathy test split (the images are never read)."""
    images = [
        {
            "filename": f"{k}.png",
            "split": "test",
            "sentences": [{"raw": f"caption {k} {j}"} for j in range(2)],
        }
        for k in range(2)
    ]
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"images": images}))
    return path


@pytest.mark.parametrize("rule, i2t_meanr", [("captions", 2.0), ("items", 1.5)])
def test_eval_item_to_text_and_direction_on_a_score_matrix(tmp_path, rule, i2t_meanr):
    """The ranking module's worked example: scores [[.5, .1], [.4, .2], [.9, .95], [.8, .7]] (texts x items),
    texts of items [0, 0, 1, 1]: item->text ranks [2, 0] by captions, [1, 0] by items (mean rank + 1)."""
    scores = tmp_path / "s.npy"
    np.save(scores, np.array([[0.5, 0.1], [0.4, 0.2], [0.9, 0.95], [0.8, 0.7]], np.float32))
    data = _two_item_data(tmp_path)
    out = tmp_path / "r.json"
    args = ["eval", "--scores", str(scores), "--data", str(data), "--out", str(out)]
    assert main([*args, "--item-to-text", rule]) == 0
    assert json.loads(out.read_text())["metrics"]["i2t_meanr"] == pytest.approx(i2t_meanr)
    assert main([*args, "--item-to-text", rule, "--direction", "t2i"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert "t2i_r1" in metrics and not any(key.startswith("i2t") for key in metrics)


@pytest.mark.parametrize("mode", ["clean", "compat"])
def test_eval_mixed_mode_is_recorded_with_the_graded_results(synth_data, tiny_model, tmp_path, mode):
    out = tmp_path / "r.json"
    args = ["eval", "--model", str(tiny_model), "--data", str(synth_data), "--relevance", "rouge-l"]
    assert main([*args, "--mixed-mode", mode, "--out", str(out), "--no-cache"]) == 0
    result = json.loads(out.read_text())
    assert result["ndcg"]["mixed_mode"] == mode and "t2it_ndcg@10" in result["mixed"]


@pytest.fixture(scope="module")
def id_named_classes(class_bench, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The class benchmark's images under id-named folders (``n000``, ``n001``, ...: ImageNet's layout)
    with a ``classnames.txt`` naming them: ``(root, classnames.txt, class names)``."""
    import shutil

    data, _ = class_bench
    root = tmp_path_factory.mktemp("id_named") / "images"
    names = list(data.classnames)
    for split in ("train", "val", "test"):
        for k, name in enumerate(names):
            shutil.copytree(data.root / split / name.replace(" ", "_"), root / split / f"n{k:03d}")
    classnames = root.parent / "classnames.txt"
    classnames.write_text("".join(f"n{k:03d} {name}\n" for k, name in enumerate(names)))
    return root, classnames, names


def test_prompts_train_and_eval_take_their_options(class_bench, id_named_classes, tmp_path, monkeypatch):
    _, clip = class_bench
    root, classnames, names = id_named_classes
    run = tmp_path / "run"
    args = ["prompts", "train", "--model", str(clip), "--data", str(root), "--classnames", str(classnames)]
    args += ["--method", "textrefiner", "--subset", "all", "--alpha", "0.3", "--select", "last"]
    assert main([*args, "--shots", "2", "--epochs", "1", "--batch-size", "8", "--out", str(run)]) == 0
    recorded = json.loads((run / "prompts" / "prompts.json").read_text())
    assert recorded["classnames"] == names  # all classes, by the names classnames.txt gives
    settings = json.loads((run / "run.json").read_text())
    assert (settings["subset"], settings["select"], settings["refiner"]["alpha"]) == ("all", "last", 0.3)
    out = tmp_path / "zero_shot.json"
    args = ["prompts", "eval", "--zero-shot", str(clip), "--template", "a picture of a", "--data", str(root)]
    args += ["--split", "test"]
    assert main([*args, "--classnames", str(classnames), "--protocol", "all-classes", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"]["template"] == "a picture of a" and 0 <= result["classification"]["acc"] <= 100
    # the prompts serve search by class over an index of the same model
    import uvicorn
    from fastapi.testclient import TestClient

    index = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(clip), "--images", str(root / "test"), "--out", str(index)])
        == 0
    )
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    assert main(["serve", str(index), "--prompts", str(run / "prompts")]) == 0
    client = TestClient(served["app"])
    assert client.get("/health").json()["classes"] == len(names)
    hits = client.get("/api/search/class", params={"name": names[0], "k": 2}).json()["results"]
    assert len(hits) == 2


def test_index_build_from_webdataset_shards_equals_the_same_shards_as_data(synth_data, tiny_model, tmp_path):
    import io
    import tarfile

    test = load_dataset(synth_data).split("test")
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as archive:
        for n, item in enumerate(test.items[:5]):
            for suffix, data in (("png", test.media_path(item).read_bytes()), ("txt", b"a red circle")):
                info = tarfile.TarInfo(f"{n:06d}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    args = ["index", "build", "--model", str(tiny_model)]
    assert main([*args, "--webdataset", str(shard), "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--data", str(shard), "--out", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / x / "embeddings.npy") for x in ("a", "b"))
    assert a.shape[0] == 5 and a.tobytes() == b.tobytes()


def test_index_build_keeps_a_heads_tokens_in_float16_when_asked(synth_data, tmp_path):
    from vlret.models import create_model

    model = tmp_path / "maxsim"
    create_model("tiny-cnn", captions=["a red circle"], head="maxsim", seed=0).save(model)
    args = ["index", "build", "--model", str(model), "--data", str(synth_data), "--split", "test"]
    assert main([*args, "--out", str(tmp_path / "idx"), "--token-dtype", "float16", "--shortlist", "5"]) == 0
    assert np.load(tmp_path / "idx" / "head_items.tokens.npy").dtype == np.float16


def test_index_build_memory_gb_compresses_what_does_not_fit(tiny_model, tmp_path, monkeypatch):
    """4,000 vectors of 128 floats (2 MiB raw), imported from clip-retrieval's layout, with exact search
    capped at 1,000 vectors here (100,000 in use; the choice is tested at that size in test_index.py):
    inverted lists of full vectors without a budget, product-quantised ones under --memory-gb 0.001."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import vlret.index.choice as choice

    monkeypatch.setattr(choice, "EXACT_MAX", 1000)
    n, dim = 4000, 128  # the tiny model's width
    layout = tmp_path / "emb"
    (layout / "img_emb").mkdir(parents=True)
    (layout / "metadata").mkdir()
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(layout / "img_emb" / "img_emb_0.npy", vectors.astype(np.float16))
    ids = [f"{k:06d}" for k in range(n)]
    table = pa.table({"image_path": [f"{i}.jpg" for i in ids], "caption": [None] * n, "id": ids})
    pq.write_table(table, layout / "metadata" / "metadata_0.parquet")
    args = ["index", "build", "--model", str(tiny_model), "--embeddings", str(layout), "--media-root", "/p"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "small"), "--memory-gb", "0.001"]) == 0
    kinds = [
        json.loads((tmp_path / x / "index.json").read_text())["choice"]["kind"] for x in ("plain", "small")
    ]
    assert kinds == ["ivf_flat", "ivf_pq"]


def test_index_export_search_and_serve_take_their_options(captioned_index, tmp_path, monkeypatch):
    """--dtype and --collection of an export; --target and --collection of a search; every setting of
    serve reaches the app it runs (uvicorn.run is replaced by a client of that app)."""
    import uvicorn
    from fastapi.testclient import TestClient

    index, _, _ = captioned_index
    assert main(["index", "export", str(index), "--out", str(tmp_path / "emb"), "--dtype", "float32"]) == 0
    assert np.load(tmp_path / "emb" / "img_emb" / "img_emb_0.npy").dtype == np.float32
    store = str(tmp_path / "qdrant")
    args = ["index", "export", str(index), "--format", "qdrant", "--qdrant", store, "--collection", "mine"]
    assert main(args) == 0
    plain = _search_json([str(index), "a red circle", "--json"], monkeypatch)
    via_qdrant = _search_json(
        [str(index), "a red circle", "--json", "--qdrant", store, "--collection", "mine"], monkeypatch
    )
    assert [h["id"] for h in via_qdrant] == [h["id"] for h in plain]
    captions = _search_json(
        [str(index), "a red circle", "--json", "--target", "captions", "-k", "3"], monkeypatch
    )
    assert len(captions) == 3 and all(h["text"] for h in captions)

    served = {}
    monkeypatch.setattr(
        uvicorn, "run", lambda app, host, port, **kw: served.update(app=app, host=host, port=port)
    )
    visa = tmp_path / "visa.yaml"
    visa.write_text("k: 3\n")
    args = [
        "serve",
        str(index),
        "--host",
        "127.0.0.2",
        "--port",
        "8123",
        "--max-k",
        "3",
        "--check-every",
        "5",
    ]
    args += ["--max-upload-mb", "0.001", "--max-upload-megapixels", "0.0001", "--visa-config", str(visa)]
    assert main([*args, "--visa-timeout", "7", "--qdrant", store, "--collection", "mine"]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.2", 8123)
    client = TestClient(served["app"])
    assert client.get("/health").json()["visa_timeout_s"] == 7
    assert client.get("/api/search", params={"q": "a red circle", "k": 3}).status_code == 200
    assert client.get("/api/search", params={"q": "a red circle", "k": 4}).status_code == 422  # --max-k 3
    big = _png(40, 40)  # 1,600 pixels, more than 100 (--max-upload-megapixels 0.0001)
    assert client.post("/api/search/image", files={"file": ("q.png", big, "image/png")}).status_code in (
        413,
        422,
    )
    huge = _png(8, 8) + b"\0" * 2048  # over 1 KiB (--max-upload-mb 0.001)
    assert client.post("/api/search/image", files={"file": ("q.png", huge, "image/png")}).status_code == 413


def _png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _search_json(args: list[str], monkeypatch) -> list[dict]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["search", *args]) == 0
    return json.loads(out.getvalue())


def test_on_error_skip_leaves_out_an_image_that_is_missing_wherever_a_model_reads_every_image(
    csv_data, synth_data, tiny_model, tmp_path, capsys
):
    """A row whose image is gone: `--on-error raise` (the default) stops naming it; `skip` leaves it out with
    its caption, on the commands that read every image."""
    broken = tmp_path / "pairs.csv"
    lines = csv_data.read_text(encoding="latin-1").splitlines()
    broken.write_text("\n".join([*lines, "not-there.png,a ghost"]) + "\n", encoding="latin-1")
    skip = [str(broken), *_data_args(csv_data, synth_data, "test")]
    at = skip.index("--on-error")
    raise_ = skip[:at] + skip[at + 2 :]  # the default, --on-error raise
    visa = ["rerank", "visa", "--model", str(tiny_model), "--split", "test", "--queries", "2", "--data"]
    teacher = [
        "features",
        "teacher",
        "--image-tower",
        "tiny-vit",
        "--text-tower",
        "minilm",
        "--split",
        "test",
    ]
    regions = ["features", "regions", "--regions", "2", "--input-size", "32", "--split", "test"]
    for name, command in (("visa", visa), ("teacher", teacher), ("regions", regions)):
        data = [] if name == "visa" else ["--data"]
        out = ["--out", str(tmp_path / name)]
        assert main([*command, *data, *raise_, *out]) == 2, name
        assert "not-there.png" in capsys.readouterr().err, name
        assert main([*command, *data, *skip, *out]) == 0, name
    captions = (
        len(load_dataset(synth_data).split("test").captions) + 1
    )  # the ghost is left out, "un café" kept
    assert json.loads((tmp_path / "teacher" / "teacher.json").read_text())["pairs"] == captions
    assert len(np.load(tmp_path / "regions" / "test_ims.npy")) == len(
        load_dataset(synth_data).split("test").items
    )


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--model", "m", "--data", "d"],
        ["index", "build", "--model", "m", "--out", "o", "--videos", "v"],
    ],
)
def test_video_frames_take_1_to_256_and_refuse_0_which_once_meant_8(command, capsys):
    from vlret.cli import parse_args
    from vlret.data.video import MAX_FRAMES, FrameSampling
    from vlret.errors import ConfigError
    from vlret.models.video import VideoConfig

    assert MAX_FRAMES == 256
    for good in ("1", "256"):
        assert parse_args([*command, "--video-frames", good]).video_frames == int(good)
    for bad, says in (("0", "expected 1 to 256 frames per clip, not 0"), ("257", "not 257"), ("x", "'x'")):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--video-frames", bad])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    FrameSampling(frames=256)
    FrameSampling(frames=None, fps=1.0, max_frames=256)
    VideoConfig(frames=256)
    for make in (
        lambda: FrameSampling(frames=257),
        lambda: FrameSampling(frames=None, fps=1.0, max_frames=257),
        lambda: VideoConfig(frames=257),
    ):
        with pytest.raises(ConfigError, match="257"):
            make()


def test_serve_settings_are_checked_before_anything_is_loaded(captioned_index, tmp_path, monkeypatch, capsys):
    import uvicorn

    index, _, _ = captioned_index
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.append((host, port)))
    refused = {
        ("--max-k", "0"): "--max-k must be a number at least 1, not 0",
        ("--max-upload-mb", "0"): "--max-upload-mb must be a number more than 0, not 0.0",
        ("--max-upload-mb", "nan"): "--max-upload-mb must be a number more than 0, not nan",
        ("--max-upload-megapixels", "-1"): "--max-upload-megapixels must be a number more than 0, not -1.0",
        ("--check-every", "nan"): "--check-every must be a number at least 0, not nan",
        ("--check-every", "-0.5"): "--check-every must be a number at least 0, not -0.5",
        ("--visa-timeout", "-1"): "--visa-timeout must be a number more than 0, not -1.0",
        ("--visa-timeout", "inf"): "--visa-timeout must be a number more than 0, not inf",
        ("--workers", "0"): "--workers must be a number at least 1, not 0",
        ("--port", "99999"): "--port must be 0 to 65535 (0: any free port), not 99999",
        ("--port", "-1"): "--port must be 0 to 65535",
        ("--host", "no-such-host.invalid"): "--host no-such-host.invalid: no address of this machine",
        ("--qdrant", str(tmp_path / "store"), "--workers", "2"): "serves with --workers 1",
    }
    for options, says in refused.items():
        assert main(["serve", str(index), *options]) == 2, options
        err = capsys.readouterr()
        assert says in err.err and "serving" not in err.out, (options, err.err)
    assert not served and not (tmp_path / "store").exists()
    # the other side of each bound
    edge = [
        "--max-k",
        "1",
        "--check-every",
        "0",
        "--port",
        "0",
        "--max-upload-mb",
        "0.01",
        "--visa-timeout",
        "0.1",
    ]
    assert main(["serve", str(index), *edge]) == 0
    assert served == [("127.0.0.1", 0)]


def test_a_replica_that_cannot_start_stops_the_supervisor_and_says_why(tmp_path, monkeypatch):
    import os
    import signal

    from vlret.serve import replicas

    failure = tmp_path / "failure.txt"
    settings = {"settings": {"index": str(tmp_path / "gone")}, "threads": 1, "failure_file": str(failure)}
    monkeypatch.setenv(replicas.SETTINGS_VARIABLE, json.dumps(settings))
    signals = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((pid, sig)))
    with pytest.raises(SystemExit):
        replicas.app_from_environment()
    assert signals == [(os.getppid(), signal.SIGTERM)]
    assert failure.read_text().startswith("a replica could not start: ") and "gone" in failure.read_text()
