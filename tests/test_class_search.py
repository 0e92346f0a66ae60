"""Learnt prompts as retrieval: classification metrics read both ways, class search over an index, the
serve endpoints, the prompt recipes, the all-classes protocol and the classification results table."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from vlret.cli import main
from vlret.data.classes import base_new
from vlret.errors import ConfigError
from vlret.evaluate.classification import average_precision, class_retrieval_map, top1_accuracy
from vlret.evaluate.results import results_table
from vlret.index import build_index
from vlret.index.class_search import ClassSearch
from vlret.index.search import Searcher
from vlret.models import create_model
from vlret.serve import create_app
from vlret.train.data import Augment
from vlret.train.prompt_trainer import (
    PromptRun,
    evaluate_all_classes,
    evaluate_base_to_new,
    load_prompt_recipe,
    load_prompts,
    train_prompts,
)

# ----- metrics, by hand ---------------------------------------------------------------------------------


def test_top1_accuracy_by_hand():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, np.array([1, 1, 1])) == pytest.approx(200 / 3)


def test_average_precision_by_hand():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # the same scores in another order: positives at ranks 2 and 4: (1/2 + 2/4) / 2
    assert average_precision(np.array([0.1, 0.8, 0.3, 0.9]), np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 0])) == 0.0


def test_class_retrieval_ranks_by_probability_not_by_raw_logit():
    # image 0 scores high for every class; by probability, image 1 is the better class-1 image
    logits = np.array([[5.0, 4.0], [0.0, 1.0]])
    labels = np.array([0, 1])
    # class 1 by raw logit would put image 0 first (AP 1/2, mAP 75); by probability 0.27 < 0.73: AP 1
    assert class_retrieval_map(logits, labels) == pytest.approx(100.0)


def test_class_retrieval_map_averages_the_classes_present():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
    labels = np.array([0, 1, 1])
    # class 0 ranks images 0, 2, 1: AP 1; class 1 ranks 1, 2, 0: AP 1; class 2 has no image and is skipped
    assert class_retrieval_map(logits, labels) == pytest.approx(100.0)
    labels = np.array([1, 0, 0])  # class 0 ranks its images 2nd and 3rd: (1/2 + 2/3) / 2; class 1: 1/3
    assert class_retrieval_map(logits, labels) == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2)


# ----- augmentation --------------------------------------------------------------------------------------


def test_random_resized_crop_draws_area_and_aspect_in_range():
    augment = Augment((0.08, 1.0), False, (3 / 4, 4 / 3))
    image = Image.new("RGB", (200, 100))
    for seed in range(300):
        box = augment._crop_box(200, 100, np.random.default_rng(seed))
        left, top, right, bottom = box
        w, h = right - left, bottom - top
        assert left >= 0 and right <= 200 and top >= 0 and bottom <= 100
        assert 0.08 * 20000 * 0.9 <= w * h <= 20000 * 1.01  # rounding of the sides
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    cropped = augment(image, np.random.default_rng(0))
    box = augment._crop_box(200, 100, np.random.default_rng(0))
    assert cropped.size == (box[2] - box[0], box[3] - box[1])


def test_random_resized_crop_falls_back_to_a_central_box_when_no_draw_fits():
    # a 1 x 100 strip cannot hold a box of aspect 3/4..4/3 with half its area: the centred box of width 1
    # and height round(1 / (3/4)) = 1 at row (100 - 1) // 2, as torchvision falls back
    assert Augment((0.5, 1.0), False, (3 / 4, 4 / 3))._crop_box(1, 100, np.random.default_rng(0)) == (
        0,
        49,
        1,
        50,
    )
    # 300 x 100 (aspect 3): width clamped to 100 * 4/3 = 133, centred at (300 - 133) // 2 = 83
    assert Augment((0.99, 1.0), False, (3 / 4, 4 / 3))._crop_box(300, 100, np.random.default_rng(0)) == (
        83,
        0,
        216,
        100,
    )


def test_flip_mirrors_the_pixels():
    image = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(2, 6).repeat(3).reshape(2, 6, 3))
    flips = [Augment(hflip=True)(image, np.random.default_rng(s)) for s in range(20)]
    mirrored = np.asarray(image)[:, ::-1]
    assert any(np.array_equal(np.asarray(f), mirrored) for f in flips)
    assert any(np.array_equal(np.asarray(f), np.asarray(image)) for f in flips)


# ----- recipes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["coop_b2n", "textrefiner_b2n", "coop_xd", "textrefiner_xd"])
def test_the_paper_recipes_carry_the_released_settings(name):
    run = load_prompt_recipe(name)
    assert (run.shots, run.epochs, run.batch_size, run.lr, run.init) == (16, 10, 32, 0.002, "a photo of a")
    assert run.crop_scale == [0.08, 1.0] and run.hflip and run.aspect == pytest.approx([3 / 4, 4 / 3])
    assert run.subset == ("base" if name.endswith("b2n") else "all")
    assert run.select == ("best_val" if name.endswith("b2n") else "last")  # xd_test loads epoch 10
    r = run.refiner
    if name.startswith("coop"):
        assert r.alpha == 0
    else:
        assert (r.alpha, r.cache_size, r.momentum, r.semantic_divisor, r.regulariser_weight) == (
            0.2,
            25,
            0.8,
            50.0,
            20.0,
        )


def test_a_recipe_with_an_unknown_key_names_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*learning_rate.*valid keys"):
        load_prompt_recipe(bad)
    with pytest.raises(ConfigError, match="crop_scale"):
        load_prompt_recipe("coop_b2n", ["crop_scale=[0.5,2.0]"])


# ----- on the synthetic class benchmark ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(class_bench, tmp_path_factory):
    """The shared class benchmark, prompts trained on it for one epoch, and an index of its test images."""
    data, clip = class_bench
    out = tmp_path_factory.mktemp("class_search")
    run = PromptRun(model=str(clip), shots=4, epochs=1, batch_size=16, select="last")
    prompts = train_prompts(run, data, out / "run")["prompts"]
    index = build_index(str(clip), out / "idx", images=data.root / "test", progress=False)
    return data, clip.parent, prompts, index


def test_a_resumed_run_with_other_settings_is_refused(bench, tmp_path):
    data, root, _, _ = bench
    run = PromptRun(model=str(root / "clip"), shots=4, epochs=2, batch_size=16)
    train_prompts(run, data, tmp_path / "run", stop_after=1)
    with pytest.raises(ConfigError, match="other settings.*lr"):
        train_prompts(
            PromptRun(model=str(root / "clip"), shots=4, epochs=2, batch_size=16, lr=0.1),
            data,
            tmp_path / "run",
        )


def test_all_classes_on_the_base_half_equals_base_to_new_base(bench):
    data, _, prompts, _ = bench
    both = evaluate_base_to_new(prompts, data)
    base = evaluate_all_classes(prompts, base_new(data, "base"))
    assert base["acc"] == pytest.approx(both["base_acc"])
    assert base["map"] == pytest.approx(both["base_map"])
    assert 0 <= base["map"] <= 100


def test_class_search_ranks_images_by_the_learnt_class_embedding(bench):
    data, root, prompts, index = bench
    search = ClassSearch(Searcher(index), prompts)
    classifier = load_prompts(prompts)
    classifier.set_classes(search.classnames)
    name = search.classnames[3]
    hits = search.class_hits(name, 5)
    # independently: every indexed image through the classifier's own logits, this class's column
    test_dir = root / "images" / "test"
    files = sorted(test_dir.rglob("*.png"))
    pixels = torch.from_numpy(np.stack([classifier.model.image_transform(Image.open(f)) for f in files]))
    probability = torch.softmax(classifier.logits(pixels), 1)[:, 3].numpy()
    expected = [str(files[i].relative_to(test_dir)) for i in np.argsort(-probability, kind="stable")[:5]]
    assert ["/".join(h.path.split("/")[-2:]) for h in hits] == expected
    assert [h.score for h in hits] == pytest.approx(np.sort(probability)[::-1][:5], rel=1e-4)


def test_classify_gives_the_softmax_of_the_classifier_logits(bench):
    data, root, prompts, index = bench
    search = ClassSearch(Searcher(index), prompts)
    image_file = root / "images" / "test" / "red_circle" / "0000.png"
    top = search.classify([Image.open(image_file)], k=3)[0]
    classifier = load_prompts(prompts)
    pixels = torch.from_numpy(classifier.model.image_transform(Image.open(image_file))[None])
    probabilities = torch.softmax(classifier.logits(pixels)[0], 0)
    best = torch.argsort(probabilities, descending=True)[:3]
    assert [n for n, _ in top] == [classifier.prompts.classnames[int(i)] for i in best]
    assert [p for _, p in top] == pytest.approx(probabilities[best].tolist(), rel=1e-4)


def test_prompts_from_another_model_are_refused(bench, tmp_path):
    data, root, prompts, _ = bench
    other = create_model("tiny-vit", captions=["a photo of a red circle."])
    other.save(tmp_path / "other")
    other_index = build_index(
        str(tmp_path / "other"), tmp_path / "idx", images=root / "images" / "test", progress=False
    )
    with pytest.raises(ConfigError, match="learnt on"):
        ClassSearch(Searcher(other_index), prompts)


def _png(image_file) -> bytes:
    buf = io.BytesIO()
    Image.open(image_file).save(buf, format="PNG")
    return buf.getvalue()


def test_serve_searches_by_class_and_classifies_uploads(bench):
    data, root, prompts, index = bench
    client = TestClient(create_app(index, prompts=prompts))
    assert client.get("/health").json()["classes"] == 12  # trained on the base half
    names = client.get("/api/classes").json()["classes"]
    assert names == data.classnames[:12]
    answer = client.get("/api/search/class", params={"name": names[0], "k": 4}).json()
    expected = ClassSearch(Searcher(index), prompts).class_hits(names[0], 4)
    assert [r["item"] for r in answer["results"]] == [Searcher(index).item_number(h.id) for h in expected]
    assert client.get("/api/search/class", params={"name": "purple cloud"}).status_code == 404
    image_file = root / "images" / "test" / "red_circle" / "0000.png"
    classes = client.post(
        "/api/classify?k=2", files={"file": ("x.png", _png(image_file), "image/png")}
    ).json()
    assert [c["name"] for c in classes["classes"]] == [
        n for n, _ in ClassSearch(Searcher(index), prompts).classify([Image.open(image_file)], 2)[0]
    ]
    plain = TestClient(create_app(index))
    assert plain.get("/health").json()["classes"] is None
    assert plain.get("/api/classes").status_code == 404


def test_cli_all_classes_protocol_and_the_classification_table(bench, tmp_path, capsys):
    data, root, prompts, _ = bench
    split = str(root / "split_zhou_SynthShapes.json")
    out = tmp_path / "all.json"
    assert (
        main(["prompts", "eval", prompts, "--data", split, "--protocol", "all-classes", "--out", str(out)])
        == 0
    )
    expected = evaluate_all_classes(prompts, data)
    assert f"accuracy {expected['acc']:.2f}" in capsys.readouterr().out
    assert main(["results", "table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| accuracy | class→image mAP |" in table and f"| {expected['acc']:.2f} |" in table


def test_results_table_puts_classification_in_its_own_table():
    retrieval = {"model": {"name": "cos"}, "protocol": {"name": "generic"}, "metrics": {"rsum": 1.5}}
    b2n = {
        "task": "classification",
        "model": {"name": "coop"},
        "protocol": {"name": "base-to-new"},
        "classification": {"base_acc": 80.0, "new_acc": 60.0, "hm": 480 / 7},
    }
    tables = results_table([retrieval, b2n]).split("\n\n")
    assert len(tables) == 2 and "rsum" in tables[0]
    assert tables[1].splitlines()[0] == "| run | protocol | base | new | HM |"
    assert tables[1].splitlines()[2] == "| coop | base-to-new | 80.00 | 60.00 | 68.57 |"


def test_vlret_train_points_a_prompt_recipe_to_prompts_train():
    from vlret.train.recipe import load_recipe

    with pytest.raises(ConfigError, match="vlret prompts train --recipe coop_b2n"):
        load_recipe("coop_b2n")


def test_damaged_prompts_are_one_line_naming_the_file(bench, tmp_path, capsys):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    data, root, prompts, _ = bench
    split = str(root / "split_zhou_SynthShapes.json")
    cases = {}
    for case in ("garbage", "width", "json", "fields"):
        folder = tmp_path / case
        shutil.copytree(prompts, folder)
        cases[case] = folder
    (cases["garbage"] / "prompts.safetensors").write_bytes(b"not safetensors at all")
    state = load_file(cases["width"] / "prompts.safetensors")
    save_file({**state, "ctx": state["ctx"][:, :-1].contiguous()}, cases["width"] / "prompts.safetensors")
    (cases["json"] / "prompts.json").write_text('{"model": ')
    meta = json.loads((cases["fields"] / "prompts.json").read_text())
    (cases["fields"] / "prompts.json").write_text(
        json.dumps({k: v for k, v in meta.items() if k != "classnames"})
    )
    says = {
        "garbage": "prompts.safetensors: not a readable safetensors file",
        "width": "the prompts were learnt on another model",
        "json": "prompts.json: line 1 column",
        "fields": "prompts.json: not what vlret prompts train writes (missing: classnames)",
    }
    for case, folder in cases.items():
        assert (
            main(["prompts", "eval", str(folder), "--data", split, "--out", str(tmp_path / f"{case}.json")])
            == 2
        )
        err = capsys.readouterr().err
        assert says[case] in err and "Traceback" not in err, (case, err)
