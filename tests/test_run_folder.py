"""The run-folder policy: a finished run is never replaced silently, and an index whose model is gone says so."""

import json
import os
from pathlib import Path

import pytest

from test_bad_input import _overrides
from vlret.cli import build_parser, main
from vlret.errors import ConfigError
from vlret.train import Trainer, load_recipe
from vlret.train.logger import read_metrics


def _best_target(out: Path) -> str:
    return os.readlink(out / "checkpoints" / "best")


@pytest.fixture(scope="module")
def finished_run(synth_data, tmp_path_factory):
    """A finished run of 4 steps (best and last at step 4), shared read-only by the tests that copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Trainer(load_recipe(None, _overrides(synth_data, out, "train.max_steps=4")), progress=False).fit()
    return out


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, symlinks=True)
    return dest


def test_a_new_run_into_a_finished_runs_folder_is_refused_and_nothing_is_deleted(
    synth_data, finished_run, tmp_path
):
    out = _copy(finished_run, tmp_path / "run")
    best = _best_target(out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    shorter = load_recipe(None, _overrides(synth_data, out, "train.max_steps=1"))
    with pytest.raises(ConfigError) as info:
        Trainer(shorter, progress=False)
    message = str(info.value)
    assert str(out) in message and "best checkpoint is step 4" in message
    assert "--overwrite" in message and "--resume" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert _best_target(out) == best and (out / "checkpoints" / best / "model").is_dir()


def test_resuming_with_another_recipe_names_overwrite_as_well(synth_data, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    other = load_recipe(None, _overrides(synth_data, out, "train.max_steps=4", "optim.lr=0.5"))
    with pytest.raises(ConfigError, match="--overwrite"):
        Trainer(other, resume=True, progress=False)
    assert _best_target(out) == "step-0000004"
    longer = _overrides(synth_data, out, "train.max_steps=5", "optim.lr=0.5")
    assert main(["train", "--resume-anyway", "--quiet", *longer]) == 0  # resumed with the changed recipe
    assert _best_target(out) == "step-0000005" or (out / "checkpoints" / "step-0000005").is_dir()


def test_overwrite_starts_afresh_without_the_old_runs_logs(synth_data, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    old_records = read_metrics(out / "metrics.jsonl")
    assert max(r["step"] for r in old_records) == 4
    # what else a run leaves: a frozen tower's memo shards and the event files (the old run's, planted)
    for leftover in (out / "memo" / "image-rank0.pt", out / "tensorboard" / "events.old"):
        leftover.parent.mkdir(exist_ok=True)
        leftover.write_bytes(b"old run")
    overrides = _overrides(synth_data, out, "train.max_steps=2", "train.log_every_steps=1", "optim.lr=1e-4")
    for resume in ("--resume", "--resume-anyway"):  # one keeps the run, the other deletes it: never both
        assert main(["train", "--overwrite", resume, "--quiet", *overrides]) == 2
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 4  # nothing deleted
    assert main(["train", "--overwrite", "--quiet", *overrides]) == 0
    assert not (out / "memo").exists()  # the tiny model keeps no memo: nothing of the old one is left
    assert not (out / "tensorboard" / "events.old").exists()
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]  # the old run's 4 steps are gone
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000002"]
    assert json.loads((out / "recipe.json").read_text())["optim"]["lr"] == 1e-4


def test_resuming_the_same_recipe_of_a_finished_run_does_nothing(synth_data, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    same = load_recipe(None, _overrides(synth_data, out, "train.max_steps=4"))
    summary = Trainer(same, resume=True, progress=False).fit()
    assert summary["steps"] == 4 and _best_target(out) == "step-0000004"


def test_a_folder_with_a_recipe_but_no_checkpoint_starts_afresh(synth_data, tmp_path):
    """A run that stopped before its first checkpoint left nothing worth keeping: no --overwrite needed, and
    its log lines do not mix with the new run's."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 99, "loss": 1.0}\n')
    recipe = load_recipe(None, _overrides(synth_data, out, "train.max_steps=1", "train.log_every_steps=1"))
    Trainer(recipe, progress=False).fit()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == [1]


def test_train_and_demo_take_overwrite_on_the_command_line():
    parser = build_parser()
    assert parser.parse_args(["train", "--overwrite", "train.epochs=1"]).overwrite
    assert parser.parse_args(["demo", "--overwrite"]).overwrite
    assert not parser.parse_args(["demo"]).overwrite


def test_an_index_whose_model_is_gone_says_so_and_how_to_rebuild(synth_data, finished_run, tmp_path):
    import shutil

    from vlret.data import load_dataset
    from vlret.index import Searcher, build_index

    out = _copy(finished_run, tmp_path / "run")
    model_dir = (out / "checkpoints" / "best" / "model").resolve()
    test_split = load_dataset(synth_data).split("test")
    index = build_index(str(model_dir), tmp_path / "index", dataset=test_split, progress=False)
    shutil.rmtree(model_dir.parent)
    searcher = Searcher(index)
    with pytest.raises(ConfigError) as info:
        searcher.text_to_image("a red circle", k=3)
    message = str(info.value)
    assert str(model_dir) in message and "is gone" in message and "vlret index build" in message
