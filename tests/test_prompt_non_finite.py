"""No NaN counted as right in prompt learning: bad numbers refused, NaN never trained, saved or scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlret.errors import ConfigError, NonFiniteScoreError, TrainingError
from vlret.evaluate.classification import class_retrieval_map, top1_accuracy
from vlret.train.prompt_trainer import PromptRun, evaluate_base_to_new, load_prompts, train_prompts


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"shots": 0}, "shots"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_numbers_are_refused_with_their_key(class_bench, settings, key):
    _, clip = class_bench
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        PromptRun(model=str(clip), **settings)


@pytest.mark.parametrize(
    "refiner, key",
    [
        ({"alpha": -0.1}, "refiner.alpha"),
        ({"alpha": float("nan")}, "refiner.alpha"),
        ({"momentum": 1.5}, "refiner.momentum"),
        ({"semantic_divisor": 0.0}, "refiner.semantic_divisor"),
        ({"cache_size": 0}, "refiner.cache_size"),
    ],
)
def test_bad_refiner_settings_are_refused_from_the_cli(class_bench, tmp_path, refiner, key, capsys):
    from vlret.cli import main

    data, clip = class_bench
    overrides = [f"refiner.{k}={v}" for k, v in refiner.items()]
    code = main(
        ["prompts", "train", "--data", data.source, "--model", str(clip), "--out", str(tmp_path), *overrides]
    )
    assert code == 2 and key in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()


def test_the_cli_refuses_a_nan_learning_rate_before_any_work(class_bench, tmp_path, capsys):
    from vlret.cli import main

    data, clip = class_bench
    code = main(
        [
            "prompts",
            "train",
            "--data",
            data.source,
            "--model",
            str(clip),
            "--lr",
            "nan",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "lr: expected a finite number > 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_loss_that_becomes_nan_stops_training_and_saves_nothing(class_bench, tmp_path, monkeypatch):
    import vlret.train.prompt_trainer as prompt_trainer

    data, clip = class_bench
    real = prompt_trainer.prompt_losses

    def poisoned(classifier, pixels, labels):
        terms = real(classifier, pixels, labels)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(prompt_trainer, "prompt_losses", poisoned)
    run = PromptRun(model=str(clip), method="coop", shots=2, epochs=1, batch_size=16)
    with pytest.raises(TrainingError, match=r"epoch 1, step 1: the loss is not finite .*no epoch was saved"):
        train_prompts(run, data, tmp_path / "run")
    assert not (tmp_path / "run" / "prompts").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    json.loads((tmp_path / "run" / "run.json").read_text())  # valid JSON


def test_saved_prompts_holding_nan_are_refused_on_load(class_bench, tmp_path):
    data, clip = class_bench
    run = PromptRun(model=str(clip), method="coop", shots=2, epochs=1, batch_size=16, select="last")
    folder = tmp_path / "run" / "prompts"
    train_prompts(run, data, tmp_path / "run")
    state = load_file(folder / "prompts.safetensors")
    state["ctx"][0, 3] = float("nan")
    save_file(state, folder / "prompts.safetensors")
    with pytest.raises(ConfigError, match=r"prompts.safetensors: ctx holds NaN or infinity"):
        load_prompts(folder)
    with pytest.raises(ConfigError, match="ctx holds NaN"):
        evaluate_base_to_new(folder, data)


def test_nan_logits_are_not_counted_as_class_zero():
    labels = np.array([0, 0, 1])
    logits = np.array([[np.nan, 1.0], [2.0, 1.0], [0.0, 1.0]])
    # argmax would read the NaN row as class 0 and report 100% (3 of 3) instead of failing
    with pytest.raises(NonFiniteScoreError) as info:
        top1_accuracy(logits, labels)
    assert (info.value.row, info.value.column) == (0, 0)
    with pytest.raises(NonFiniteScoreError):
        class_retrieval_map(np.array([[1.0, np.inf], [0.0, 1.0]]), np.array([0, 1]))
    assert top1_accuracy(np.array([[2.0, 1.0], [2.0, 1.0], [0.0, 1.0]]), labels) == pytest.approx(100.0)


def test_class_search_refuses_a_nan_image_embedding(class_bench, tmp_path):
    from vlret.index import Searcher, build_index
    from vlret.index.class_search import ClassSearch

    data, clip = class_bench
    run = PromptRun(model=str(clip), method="coop", shots=2, epochs=1, batch_size=16, select="last")
    train_prompts(run, data, tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    for n, item in enumerate(data.split("test")[:4]):
        (images / f"{n}.png").write_bytes(data.path(item).read_bytes())
    index = build_index(str(clip), tmp_path / "index", images=images, progress=False)
    search = ClassSearch(Searcher(index), tmp_path / "run" / "prompts")
    features = np.zeros((2, search.class_embeddings.shape[1]), np.float32)
    features[1, 0] = np.nan
    with pytest.raises(NonFiniteScoreError) as info:
        search.classify_features(features)
    assert info.value.row == 1
    torch.testing.assert_close(
        torch.tensor(search.classify_features(features[:1], k=1)[0][0][1]),
        torch.tensor(1 / len(search.classnames)),
    )


@pytest.mark.parametrize("seed, refused", [("-1", True), ("0", False)])
def test_a_negative_seed_is_refused_before_any_work(class_bench, tmp_path, capsys, seed, refused):
    from vlret.cli import main
    from vlret.train.prompt_trainer import PromptRun

    data, clip = class_bench
    if not refused:  # the other side of the bound: seed 0 is a run's
        assert PromptRun(model=str(clip), seed=0).seed == 0
        return
    args = ["prompts", "train", "--data", data.source, "--model", str(clip), "--seed", seed]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "seed: expected a whole number >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()
