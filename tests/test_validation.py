"""Values checked when the recipe or the flags are read, each naming its key, before any work is done; and
bad files on the newer surfaces (region features, precomp, class folders, scenes) named with their record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_precomp import write_precomp
from vlret.cli import main
from vlret.errors import ConfigError, DataError
from vlret.train import load_recipe
from vlret.train.recipe import resolve_recipe


@pytest.mark.parametrize(
    "recipe, override, message",
    [
        (
            None,
            "losses={infonce: {max_logit_scale: 0}}",
            "losses.infonce: max_logit_scale must be a finite number > 0",
        ),
        (
            None,
            "losses={hinge: {margin: .nan}}",
            "losses.hinge: margin must be a finite number >= 0, not nan",
        ),
        (None, "losses={hinge: {margin: -0.2}}", "losses.hinge: margin must be a finite number >= 0"),
        ("sgraf_synth_cpu", "losses.vsl.scale=-1", "losses.vsl: scale must be a finite number >= 0"),
        ("avse_synth_cpu", "model.options.views.count=0", "views.count must be at least 1"),
        ("avse_synth_cpu", "model.options.views.rate_train=1.5", r"views.rate_train must be in \(0, 1\]"),
        ("avse_synth_cpu", "model.options.views.rate_train=0", r"views.rate_train must be in \(0, 1\]"),
        (
            "avse_synth_cpu",
            "model.head.chunk_sizes=[60]",
            "chunk_sizes: 60 does not divide model.options.embed_dim = 256",
        ),
        (
            "sgraf_synth_cpu",
            "model.head.embed_dim=100",
            "model.head.embed_dim: 100, but the model's tokens are",
        ),
    ],
)
def test_recipe_values_are_refused_when_the_recipe_is_read(recipe, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(resolve_recipe(recipe) if recipe else None, [override])


def test_a_head_that_does_not_fit_the_features_fails_before_the_first_step(tmp_path):
    """n_regions is the region batch norm's size: 5 slots against features of 3 regions. The trainer
    scores one pair before it starts, so the error names model.head, and nothing is trained or written."""
    from vlret.train import Trainer

    data = tmp_path / "data"
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        write_precomp(data, split, n)
    recipe = load_recipe(
        resolve_recipe("sgraf_synth_cpu"),
        [
            f"data.path={data}",
            f"output_dir={tmp_path / 'run'}",
            "model.options.embed_dim=16",
            "model.options.image_options={dim: 6}",
            "model.options.text_options={word_dim: 8, hidden: 16, min_count: 1}",
            "model.head.embed_dim=16",
            "model.head.sim_dim=8",
            "model.head.n_regions=5",
        ],
    )
    with pytest.raises(ConfigError, match=r"model.head: .*5 slots \(n_regions\), but items have 3 regions"):
        Trainer(recipe, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    from vlret.data.synth import SynthConfig, write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("small"), SynthConfig(images=12, seed=5))


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["bench", "--budget-minutes", "inf"],
            "--budget-minutes must be a finite number of minutes > 0, not inf",
        ),
        (
            ["bench", "--budget-minutes", "nan"],
            "--budget-minutes must be a finite number of minutes > 0, not nan",
        ),
        (["bench", "--images", "5", "--steps", "1"], "images must be at least 10"),
        (["demo", "--images", "5"], "images must be at least 10"),
        (["data", "synth-video", "--clips", "0"], "clips must be at least 10"),
        (["data", "synth-classes", "--train", "0"], "train: images per class must be at least 1, not 0"),
    ],
)
def test_degenerate_sizes_are_refused_before_anything_is_written(
    argv, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")]
    code, err = _run(capsys, *argv, *out)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_bench_folders_that_are_files_are_refused(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, err = _run(capsys, "bench", "--steps", "1", "--out", str(a_file))
    assert code == 2 and f"{a_file}: expected a folder, found a file" in err
    code, err = _run(capsys, "bench", "--steps", "1", "--out", str(tmp_path / "o"), "--data-dir", str(a_file))
    assert code == 2 and f"--data-dir {a_file}: expected a folder, found a file" in err
    assert not (tmp_path / "o").exists()


def test_a_weights_folder_with_no_model_is_refused(small_synth, tmp_path, capsys):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    pair = f"google/vit-base-patch16-224-in21k={empty}"
    code, err = _run(
        capsys, "bench", "--suite", str(small_synth), "--weights", pair, "--out", str(tmp_path / "o")
    )
    assert code == 2 and f"--weights {pair}: {empty} holds no model transformers can load" in err


def test_a_grid_finer_than_the_image_is_refused_at_the_first_image(small_synth, tmp_path, capsys):
    code, err = _run(
        capsys,
        "features",
        "regions",
        "--data",
        str(small_synth),
        "--out",
        str(tmp_path / "r"),
        "--grid",
        "65",
    )
    assert code == 2 and "a grid of 65 x 65 cuts this 64 x 64 image into cells under a pixel" in err


def test_scene_objects_outside_the_grid_are_refused_naming_the_object(small_synth, tmp_path, capsys):
    scenes = json.loads((small_synth.parent / "scenes.json").read_text())
    scenes[3]["objects"][0]["row"] = 7
    bad = tmp_path / "scenes.json"
    bad.write_text(json.dumps(scenes))
    args = [
        "features",
        "regions",
        "--data",
        str(small_synth),
        "--out",
        str(tmp_path / "r"),
        "--boxes",
        "scene",
    ]
    code, err = _run(capsys, *args, "--scenes", str(bad))
    assert (
        code == 2
        and f"[3] ({scenes[3]['path']}) objects[0]: row and col must be whole numbers in 0..2" in err
    )


def test_region_features_skip_unreadable_images_under_on_error_skip(small_synth, tmp_path, capsys):
    media = tmp_path / "media"
    shutil.copytree(small_synth.parent, media)
    records = json.loads((media / "dataset.json").read_text())["images"]
    broken = next(r for r in records if r["split"] == "train")
    (media / broken["filepath"] / broken["filename"]).write_bytes(b"not an image")
    args = ["features", "regions", "--data", str(media / "dataset.json"), "--out", str(tmp_path / "r")]
    code, err = _run(capsys, *args)
    assert code == 2 and "cannot decode image" in err
    code, _ = _run(capsys, *args, "--on-error", "skip")
    assert code == 0
    ids = (tmp_path / "r" / "train_ids.txt").read_text().split()
    train = [r for r in records if r["split"] == "train"]
    assert len(ids) == len(train) - 1 and len(np.load(tmp_path / "r" / "train_ims.npy")) == len(train) - 1
    assert len((tmp_path / "r" / "train_caps.txt").read_text().splitlines()) == 5 * (len(train) - 1)


def test_class_folders_that_read_as_one_name_are_refused(tmp_path):
    from PIL import Image

    from vlret.data.classes import read_class_folders

    for folder in ("Golden_Retriever", "golden retriever", "poodle"):
        (tmp_path / "test" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / folder / "a.png")
    with pytest.raises(
        DataError, match=r"class folders 'Golden_Retriever' and 'golden retriever': both read as"
    ):
        read_class_folders(tmp_path)


def test_precomp_captions_that_are_not_utf8_name_the_line(tmp_path):
    from vlret.data import load_dataset

    write_precomp(tmp_path, "test", 2)
    lines = (tmp_path / "test_caps.txt").read_text().splitlines()
    lines[6] = "un caf\xe9"
    (tmp_path / "test_caps.txt").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"test_caps.txt: line 7: not utf-8 text"):
        load_dataset(tmp_path)


def test_precomp_splits_with_other_region_shapes_are_refused(tmp_path):
    from vlret.data import load_dataset

    write_precomp(tmp_path, "train", 4, regions=36, dim=6)
    write_precomp(tmp_path, "test", 2, regions=10, dim=6)
    with pytest.raises(DataError, match=r"region features differ in shape .*test \(10, 6\), train \(36, 6\)"):
        load_dataset(tmp_path)


def test_bench_advice_on_a_csv_names_what_bench_has(small_synth, tmp_path, capsys):
    records = json.loads(small_synth.read_text())["images"]
    rows = ["image,caption,split"] + [
        f"{r['filepath']}/{r['filename']},{s['raw']} caf\xe9,{r['split']}"
        for r in records
        for s in r["sentences"]
    ]
    table = tmp_path / "pairs.csv"
    table.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    args = [
        "bench",
        "--suite",
        str(table),
        "--media-root",
        str(small_synth.parent),
        "--out",
        str(tmp_path / "o"),
    ]
    code, err = _run(capsys, *args, "--methods", "cosine", "--steps", "1")
    assert code == 2 and "line 2: not utf-8 text" in err
    assert "vlret data convert" in err and "--encoding (for example" not in err
