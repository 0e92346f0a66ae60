"""Prompt learning end to end on the synthetic class benchmark: base-to-new, save and load, resume."""

from __future__ import annotations

import pytest
import torch

from vlret.train.prompt_trainer import PromptRun, evaluate_base_to_new, load_prompts, train_prompts


@pytest.fixture(scope="module")
def bench(class_bench):
    return class_bench


@pytest.mark.parametrize("method", ["coop", "textrefiner"])
def test_base_to_new_trains_saves_and_evaluates(bench, tmp_path, method):
    data, clip = bench
    run = PromptRun(model=str(clip), method=method, shots=4, epochs=2, batch_size=16)
    summary = train_prompts(run, data, tmp_path / "run")
    classifier = load_prompts(summary["prompts"])
    assert classifier.refines == (method == "textrefiner")
    assert classifier.prompts.classnames == data.classnames[:12]  # trained on base classes
    result = evaluate_base_to_new(summary["prompts"], data)
    assert 0 <= result["base_acc"] <= 100 and 0 <= result["new_acc"] <= 100
    expected_hm = (
        0
        if result["base_acc"] + result["new_acc"] == 0
        else (2 * result["base_acc"] * result["new_acc"] / (result["base_acc"] + result["new_acc"]))
    )
    assert result["hm"] == pytest.approx(expected_hm)


def test_save_and_load_restore_the_cache_exactly(bench, tmp_path):
    data, clip = bench
    run = PromptRun(model=str(clip), shots=4, epochs=1, batch_size=16, select="last")
    summary = train_prompts(run, data, tmp_path / "run")
    loaded = load_prompts(summary["prompts"])
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(loaded.cache.entries, state["cache"])


def test_a_resumed_run_matches_an_uninterrupted_one(bench, tmp_path):
    data, clip = bench
    whole = train_prompts(
        PromptRun(model=str(clip), shots=4, epochs=2, batch_size=16, select="last"), data, tmp_path / "a"
    )
    run = PromptRun(model=str(clip), shots=4, epochs=2, batch_size=16, select="last")
    train_prompts(run, data, tmp_path / "b", stop_after=1)
    resumed = train_prompts(
        PromptRun(model=str(clip), shots=4, epochs=2, batch_size=16, select="last"), data, tmp_path / "b"
    )
    a, b = load_prompts(whole["prompts"]), load_prompts(resumed["prompts"])
    torch.testing.assert_close(a.prompts.ctx, b.prompts.ctx)
    torch.testing.assert_close(a.cache.entries, b.cache.entries)


def test_the_cli_trains_and_evaluates_base_to_new(bench, tmp_path, capsys):
    import json

    from vlret.cli import main

    data, clip = bench
    split = data.source
    args = ["--data", split, "--model", str(clip), "--shots", "2", "--epochs", "1", "--batch-size", "16"]
    assert main(["prompts", "train", *args, "--method", "coop", "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "result.json"
    assert (
        main(["prompts", "eval", str(tmp_path / "run" / "prompts"), "--data", split, "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["task"] == "classification" and set(result["classification"]) == {
        "protocol",
        "base_acc",
        "new_acc",
        "hm",
        "base_map",
        "new_map",
    }
    assert "HM" in capsys.readouterr().out


def test_zero_shot_is_the_hand_written_prompt(bench):
    from vlret.train.prompt_trainer import accuracy, zero_shot

    data, clip = bench
    classifier = zero_shot(str(clip))
    result = evaluate_base_to_new(classifier, data)
    # independently: argmax of the image-text cosine over "a photo of a <class>." for the base classes
    from vlret.data.classes import base_new

    base = base_new(data, "base")
    model = classifier.model
    with torch.no_grad():
        texts = model.encode_texts(model.tokenize([f"a photo of a {c}." for c in base.classnames])).embeds
    texts = torch.nn.functional.normalize(texts, dim=-1)
    classifier.set_classes(base.classnames)
    torch.testing.assert_close(classifier.class_embeddings(), texts, atol=1e-5, rtol=0)
    assert result["base_acc"] == pytest.approx(accuracy(classifier, base, "test"))
