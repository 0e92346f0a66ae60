"""One way to name a model everywhere: the resolver, its one error, and the prompt commands on `hf:` folders
(tiny transformers CLIP and SigLIP saved with `save_pretrained`, as a hub download gives them)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_tiny import make_clip, make_siglip
from vlret.cli import main
from vlret.errors import ConfigError
from vlret.models import create_model
from vlret.models.registry import canonical_model_name, is_model_reference


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"clip": make_clip(root / "clip"), "siglip": make_siglip(root / "siglip")}


def test_a_transformers_folder_loads_with_or_without_the_prefix(hf_folders, tmp_path):
    folder = hf_folders["clip"]
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        prefixed = create_model(f"hf:{folder}").encode_images(pixels).embeds
        bare = create_model(str(folder)).encode_images(pixels).embeds
        create_model(f"hf:{folder}").save(tmp_path / "saved")
        saved = create_model(str(tmp_path / "saved")).encode_images(pixels).embeds
    assert torch.equal(prefixed, bare) and torch.equal(prefixed, saved)
    assert is_model_reference(str(folder)) and is_model_reference(str(tmp_path / "saved"))


def test_names_are_recorded_as_absolute_and_one_per_folder(hf_folders, tmp_path, monkeypatch):
    monkeypatch.chdir(hf_folders["clip"].parent)
    absolute = f"hf:{hf_folders['clip'].resolve()}"
    assert canonical_model_name("clip") == absolute
    assert canonical_model_name("hf:clip") == absolute
    assert canonical_model_name("hf:org/not-here") == "hf:org/not-here"
    assert canonical_model_name("tiny-vit") == "tiny-vit"
    create_model("hf:clip").save(tmp_path / "vlret-folder")
    assert canonical_model_name(os.path.relpath(tmp_path / "vlret-folder")) == str(tmp_path / "vlret-folder")


def test_composed_towers_by_name():
    model = create_model("composed:tiny-vit+bigru", captions=["a red circle", "a blue square"])
    assert (model.image_tower.name, model.text_tower.name) == ("tiny-vit", "bigru")
    with pytest.raises(ConfigError, match="composed:IMAGE_TOWER\\+TEXT_TOWER"):
        create_model("composed:tiny-vit")
    with pytest.raises(ConfigError, match="image_tower must be one of"):
        create_model("composed:resnet+bigru")


def test_an_unknown_name_lists_every_reading_tried(tmp_path):
    with pytest.raises(ConfigError) as caught:
        create_model(str(tmp_path / "nowhere"))
    message = str(caught.value)
    for reading in ("a built-in name", "does not exist", "hf:<hub id or folder>", "openclip:"):
        assert reading in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no vlret_model.json.*has no config.json"):
        create_model(str(tmp_path / "empty"))


def test_a_training_run_folder_points_to_its_model(tmp_path, hf_folders):
    run = tmp_path / "run"
    create_model(f"hf:{hf_folders['clip']}").save(run / "checkpoints" / "best" / "model")
    with pytest.raises(ConfigError, match="its best model is .*checkpoints/best/model"):
        create_model(str(run))


def test_other_transformers_models_and_missing_hub_ids_say_so(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="'bert' model; supported: clip, siglip"):
        create_model(str(tmp_path / "bert"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hf:nobody/no-such-model: cannot load it"):
        create_model("hf:nobody/no-such-model")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("recipe", ["coop_b2n", "textrefiner_b2n"])
def test_prompt_recipes_train_and_evaluate_on_an_hf_folder(hf_folders, class_bench, tmp_path, kind, recipe):
    data, _ = class_bench
    split = data.source
    folder = hf_folders[kind]
    common = ["--data", str(split)]
    args = [
        "prompts",
        "train",
        "--recipe",
        recipe,
        "--model",
        f"hf:{folder}",
        "--shots",
        "2",
        "--epochs",
        "1",
    ]
    assert main([*args, "--batch-size", "8", "--out", str(tmp_path / "run"), *common]) == 0
    meta = json.loads((tmp_path / "run" / "prompts" / "prompts.json").read_text())
    assert meta["model"] == f"hf:{folder.resolve()}" and meta["method"] == recipe.split("_")[0]
    out = tmp_path / "result.json"
    assert main(["prompts", "eval", str(tmp_path / "run" / "prompts"), *common, "--out", str(out)]) == 0
    learnt = json.loads(out.read_text())["classification"]
    assert main(["prompts", "eval", "--zero-shot", f"hf:{folder}", *common, "--out", str(out)]) == 0
    zero_shot = json.loads(out.read_text())["classification"]
    for metrics in (learnt, zero_shot):
        assert 0 <= metrics["base_acc"] <= 100 and 0 <= metrics["new_acc"] <= 100


def test_class_search_takes_prompts_learnt_on_the_same_hf_folder_named_either_way(
    hf_folders, class_bench, tmp_path
):
    from vlret.index import build_index
    from vlret.index.class_search import ClassSearch
    from vlret.index.search import Searcher
    from vlret.train.prompt_trainer import PromptRun, train_prompts

    data, _ = class_bench
    folder = hf_folders["clip"]
    run = PromptRun(
        model=f"hf:{folder}", method="textrefiner", shots=2, epochs=1, batch_size=8, select="last"
    )
    prompts = train_prompts(run, data, tmp_path / "run")["prompts"]
    index = build_index(str(folder), tmp_path / "idx", images=data.root / "test", progress=False)
    search = ClassSearch(Searcher(index), prompts)
    hits = search.class_hits(search.classnames[0], 3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
