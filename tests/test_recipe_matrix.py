"""Every recipe vlret ships, run from the CLI for two steps and a tiny evaluation on an architecture-true
stand-in of what it names: tiny `transformers` CLIP / ViT / Swin / BERT folders in place of the hub ids (the
way `vlret bench --weights` maps them), on the data format the recipe reads (Karpathy, LAVIS, precomp,
MSR-VTT, MSVD, LSMDC, DiDeMo, class splits, the synthetic sets).

A recipe added to `configs/` joins the matrix by existing: its hub ids and data format must have a stand-in
here, else its case fails and says which is missing. The only edits besides the stand-ins are the run's
length and size (steps, batch, the stand-ins' 32-px input) and where data and outputs live."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import vlret
from hf_tiny import make_clip
from vlret.cli import main
from vlret.schema import read_yaml

CONFIGS = Path(vlret.__file__).parent / "configs"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
HF_STAND_INS = {  # hub id -> the stand-in fixture that replaces it
    "openai/clip-vit-base-patch16": "clip",
    "openai/clip-vit-base-patch32": "clip",
    "google/vit-base-patch16-224-in21k": "vit",
    "microsoft/swin-base-patch4-window12-384-in22k": "swin",
    "bert-base-uncased": "bert",
}
PRETRAINED_TOWERS = {"efficientnet-lite0", "minilm"}  # shipped with vlret: the real weights run


def _recipe(name: str) -> dict:
    return read_yaml(CONFIGS / f"{name}.yaml")


def _is_prompt_recipe(data: dict) -> bool:
    return "method" in data


# ----- stand-in data, one builder per format ---------------------------------------------------------------


def _lavis(root: Path, synth_json: Path) -> dict:
    from vlret.data import load_dataset

    dataset = load_dataset(synth_json, "karpathy")
    folder = root / "lavis"
    folder.mkdir()
    for split in ("train", "val", "test"):
        part = dataset.split(split)
        by_item = part.item_to_captions
        if split == "train":
            rows = [
                {"image": it.path, "caption": part.captions[c].text, "image_id": it.id}
                for it, caps in zip(part.items, by_item, strict=True)
                for c in caps
            ]
        else:
            rows = [
                {"image": it.path, "caption": [part.captions[c].text for c in caps]}
                for it, caps in zip(part.items, by_item, strict=True)
            ]
        (folder / f"synth_{split}.json").write_text(json.dumps(rows))
    return {"data.path": str(folder), "data.media_root": str(dataset.media_root)}


def _precomp(folder: Path, regions: int, dim: int, val_split: str) -> dict:
    """Region features shaped as the recipe reads them (bottom-up attention: 36 x 2048), 5 captions an image."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "small", "large"]
    for split, n in (("train", 8), (val_split, 4), ("test", 4)):
        np.save(folder / f"{split}_ims.npy", rng.random((n, regions, dim), dtype=np.float32))
        lines = [" ".join(rng.choice(words, 5)) for _ in range(5 * n)]
        (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return {"data.path": str(folder)}


def _video_formats(root: Path, synth_json: Path, fmt: str) -> dict:
    """The synthetic clips under the names and annotation files of a real video dataset."""
    from vlret.data import load_dataset

    dataset = load_dataset(synth_json, "karpathy")
    folder, videos = root / fmt, root / fmt / "videos"
    videos.mkdir(parents=True)
    splits = {s: dataset.split(s) for s in ("train", "val", "test")}

    def place(name: str, item) -> None:
        target = videos / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.media_path(item), target)  # the container says what it is, not the suffix

    def texts(part, caps) -> list[str]:
        return [part.captions[c].text for c in caps]

    if fmt == "msrvtt":
        data = {"videos": [], "sentences": []}
        train_ids, test_rows = [], []
        for split, part in splits.items():
            for it, caps in zip(part.items, part.item_to_captions, strict=True):
                vid = f"video{len(data['videos'])}"
                place(f"{vid}.mp4", it)
                data["videos"].append({"video_id": vid, "split": {"val": "validate"}.get(split, split)})
                data["sentences"] += [{"video_id": vid, "caption": t} for t in texts(part, caps)]
                if split == "test":
                    test_rows.append([f"ret{len(test_rows)}", f"msr{vid}", vid, texts(part, caps)[0]])
                else:
                    train_ids.append(vid)
        (folder / "MSRVTT_data.json").write_text(json.dumps(data))
        with open(folder / "MSRVTT_train.9k.csv", "w", newline="") as f:
            csv.writer(f).writerows([["video_id"], *[[v] for v in train_ids]])
        with open(folder / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
            csv.writer(f).writerows([["key", "vid_key", "video_id", "sentence"], *test_rows])
    elif fmt == "msvd":
        lines = []
        for split, part in splits.items():
            ids = []
            for it, caps in zip(part.items, part.item_to_captions, strict=True):
                vid = f"clip{len(lines)}_{it.id}"
                place(f"{vid}.avi", it)
                ids.append(vid)
                lines += [f"{vid} {t}" for t in texts(part, caps)]
            (folder / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
        (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    elif fmt == "lsmdc":
        from vlret.data.lsmdc import FILES

        for split, part in splits.items():
            rows = []
            for n, (it, caps) in enumerate(zip(part.items, part.item_to_captions, strict=True)):
                clip = f"0001_Synth_{split}_{n:02d}.00.00.000-00.00.02.000"
                place(f"0001_Synth_{split}/{clip}.avi", it)
                rows.append([clip, "0", "2", "0", "2", texts(part, caps)[0]])
            with open(folder / FILES[split], "w", newline="") as f:
                csv.writer(f, delimiter="\t").writerows(rows)
    elif fmt == "didemo":
        for split, part in splits.items():
            moments = []
            for it, caps in zip(part.items, part.item_to_captions, strict=True):
                name = f"{it.id}.mp4"
                place(name, it)
                moments += [{"video": name, "description": t, "times": [[0, 1]]} for t in texts(part, caps)]
            (folder / f"{split}_data.json").write_text(json.dumps(moments))
    else:
        raise AssertionError(f"no stand-in for video format {fmt}")
    return {"data.path": str(folder), "data.media_root": str(videos)}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, synth_data, class_bench, vit_dir, swin_dir, bert_dir):
    """Lazily built stand-in data and models, and the runs done so far (a stage-2 recipe reads stage 1's)."""
    from vlret.data.synth_video import VideoSynthConfig, write_video_benchmark

    root = tmp_path_factory.mktemp("matrix")
    built: dict[str, dict] = {}
    folders = {"vit": vit_dir, "swin": swin_dir, "bert": bert_dir}

    def data_for(kind: str, recipe: dict | None = None) -> dict:
        if kind == "precomp":  # shaped by the recipe: regions, feature size, validation split name
            model = recipe["model"]
            regions = model["head"].get("n_regions", 36)
            dim = model["options"]["image_options"]["dim"]
            val_split = recipe["data"].get("val_split", "val")
            kind = f"precomp-{regions}x{dim}-{val_split}"
            if kind not in built:
                built[kind] = _precomp(root / kind, regions, dim, val_split)
        if kind not in built:
            if kind in ("synth", "karpathy"):
                built[kind] = {"data.path": str(synth_data)}
            elif kind == "lavis":
                built[kind] = _lavis(root, synth_data)
            elif kind == "synth_video":
                cfg = VideoSynthConfig(clips=30, size=32, frames=8, fps=4)
                built[kind] = {"data.path": str(write_video_benchmark(root / "synth_video", cfg))}
            elif kind in ("msrvtt", "msvd", "lsmdc", "didemo"):
                built[kind] = _video_formats(root, Path(data_for("synth_video")["data.path"]), kind)
            else:
                raise AssertionError(f"no stand-in data for {kind!r}: add a builder to this test")
        return built[kind]

    def model_folder(hub_id: str) -> str:
        if hub_id not in HF_STAND_INS:
            raise AssertionError(f"no stand-in for the hub id {hub_id!r}: add one to HF_STAND_INS")
        kind = HF_STAND_INS[hub_id]
        if kind == "clip" and "clip" not in folders:
            folders["clip"] = make_clip(root / "clip")
        return str(folders[kind])

    return {
        "root": root,
        "data_for": data_for,
        "model_folder": model_folder,
        "runs": {},
        "classes": class_bench,
    }


def _map_hub_ids(node, model_folder) -> None:
    """Replace hub ids by stand-in folders in place: towers' ``source`` values and ``hf:`` model names."""
    for key, value in list(node.items()) if isinstance(node, dict) else []:
        if isinstance(value, dict):
            _map_hub_ids(value, model_folder)
        elif key == "source" and isinstance(value, str) and not Path(value).exists():
            node[key] = model_folder(value)
        elif isinstance(value, str) and value.startswith("hf:") and not Path(value[3:]).exists():
            node[key] = "hf:" + model_folder(value[3:])


def _data_kind(data: dict) -> str:
    section = data.get("data") or {}
    fmt = section.get("format", "auto")
    if fmt != "auto":
        return fmt
    path = section.get("path", "")
    if "synth_video" in path:
        return "synth_video"
    if "synth" in path or not path:
        return "synth"
    raise AssertionError(f"cannot tell the data format of {path!r}")


def _dependency(name: str, data: dict) -> tuple[str, str] | None:
    """``(recipe, key)`` when ``name`` starts from another recipe's checkpoint (``runs/X/checkpoints/...``)."""
    model = data["model"] if isinstance(data["model"], str) else data["model"].get("name", "")
    if not model.startswith("runs/"):
        return None
    run = model.split("/checkpoints/")[0]
    makers = [r for r in RECIPES if _recipe(r).get("output_dir") == run]
    assert makers, f"{name}: no recipe writes {run}"
    return makers[0], ("model" if isinstance(data["model"], str) else "model.name")


def _run(name: str, matrix) -> Path:
    """Run recipe ``name`` (and first what it starts from); returns its output folder."""
    if name in matrix["runs"]:
        return matrix["runs"][name]
    data = _recipe(name)
    overrides = []
    dependency = _dependency(name, data)
    if dependency is not None:
        source, key = dependency
        model = _run(source, matrix) / "checkpoints" / "best" / "model"
        if isinstance(data["model"], str):
            data["model"] = str(model)
        else:
            data["model"]["name"] = str(model)
    _map_hub_ids(data, matrix["model_folder"])
    out = matrix["root"] / "runs" / name
    recipe_file = matrix["root"] / "recipes" / f"{name}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(yaml.safe_dump(data))
    if _is_prompt_recipe(data):
        _run_prompts(name, data, recipe_file, out, matrix)
    else:
        for key, value in matrix["data_for"](_data_kind(data), data).items():
            overrides.append(f"{key}={value}")
        _run_training(name, data, recipe_file, out, overrides)
    matrix["runs"][name] = out
    return out


def _run_training(name: str, data: dict, recipe_file: Path, out: Path, overrides: list[str]) -> None:
    options = (data["model"].get("options") or {}) if isinstance(data["model"], dict) else {}
    if "image_size" in (options.get("image_options") or {}):
        overrides.append("model.options.image_options.image_size=32")  # the stand-ins' input size
    if (data.get("teacher") or {}).get("cache"):
        overrides.append("teacher.cache=null")  # the shipped teacher towers run instead of a cache folder
    overrides += ["train.max_steps=2", "train.batch_size=4", "eval.batch_size=8", f"output_dir={out}"]
    assert main(["train", "--recipe", str(recipe_file), *overrides, "--quiet"]) == 0, name
    model = out / "checkpoints" / "best" / "model"
    assert (model / "vlret_model.json").is_file(), name
    section = {
        **(data.get("data") or {}),
        **dict(o.split("=", 1) for o in overrides if o.startswith("data.")),
    }
    args = ["eval", "--model", str(model), "--data", section["data.path"], "--split", "test"]
    if section.get("format", "auto") != "auto":
        args += ["--format", section["format"]]
    if "data.media_root" in section:
        args += ["--media-root", section["data.media_root"]]
    protocol = (data.get("eval") or {}).get("protocol", "generic")
    result_file = out / "test.json"
    assert main([*args, "--protocol", protocol, "--batch-size", "8", "--out", str(result_file)]) == 0, name
    metrics = json.loads(result_file.read_text())["metrics"]
    assert metrics and all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), name
    assert 0 <= metrics["t2i_r1"] <= 1, name
    # Optimizer moments of real-sized heads (~1.4 GB over the matrix) are never read again.
    # best/ and last/ link to a step folder, so one file can be listed twice.
    for state in out.glob("checkpoints/*/trainer_state.pt"):
        state.unlink(missing_ok=True)


def _run_prompts(name: str, data: dict, recipe_file: Path, out: Path, matrix) -> None:
    classes, _ = matrix["classes"]
    split = str(classes.source)
    args = [
        "prompts",
        "train",
        "--recipe",
        str(recipe_file),
        "--data",
        split,
        "--shots",
        "2",
        "--epochs",
        "1",
    ]
    assert main([*args, "--batch-size", "8", "--out", str(out)]) == 0, name
    protocol = "base-to-new" if data.get("subset", "base") == "base" else "all-classes"
    result_file = out / "test.json"
    ev = ["prompts", "eval", str(out / "prompts"), "--data", split, "--protocol", protocol]
    assert main([*ev, "--out", str(result_file)]) == 0, name
    metrics = json.loads(result_file.read_text())["classification"]
    accuracy = metrics["base_acc"] if protocol == "base-to-new" else metrics["acc"]
    assert 0 <= accuracy <= 100, name


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_and_evaluates_on_its_stand_in(name, matrix):
    _run(name, matrix)


def test_the_matrix_covers_every_hub_id_and_tower_the_recipes_name():
    """A recipe naming weights the matrix cannot stand in for fails here first, with the name."""
    named = set()

    def walk(node) -> None:
        for key, value in node.items() if isinstance(node, dict) else []:
            if isinstance(value, dict):
                walk(value)
            elif key == "source" or (isinstance(value, str) and value.startswith("hf:")):
                named.add(value.removeprefix("hf:"))
            elif key in ("image_tower", "text_tower") and value in PRETRAINED_TOWERS:
                named.add(value)

    for name in RECIPES:
        walk(_recipe(name))
    assert named <= set(HF_STAND_INS) | PRETRAINED_TOWERS, sorted(
        named - set(HF_STAND_INS) - PRETRAINED_TOWERS
    )
