"""The trainer end to end: resume after a kill ends with the same weights, checkpoints, logs, and learning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlret.data.synth import SynthConfig, write_benchmark
from vlret.evaluate import evaluate_model
from vlret.train import Trainer, load_recipe
from vlret.train.data import PairSource, loader_workers
from vlret.train.logger import read_metrics


def _overrides(data: Path, out: Path, epochs: int = 3) -> list[str]:
    return [
        f"data.path={data}",
        f"output_dir={out}",
        f"train.epochs={epochs}",
        "train.batch_size=8",
        "train.checkpoint_every_steps=4",
        "train.log_every_steps=2",
        "optim.lr=5e-4",
        "schedule.warmup_steps=5",
        "model.options={width: 32, embed_dim: 32, dropout: 0.1}",  # dropout: resume must restore the RNG
        "losses={infonce: {weight: 1.0}, hinge: {weight: 0.1}}",
        "data.crop_scale=[0.8, 1.0]",
    ]


def _weights(out: Path) -> dict:
    return load_file(out / "checkpoints" / "last" / "model" / "model.safetensors")


def _last_step(out: Path) -> int:
    meta = out / "checkpoints" / "last" / "meta.json"
    try:
        return json.loads(meta.read_text())["step"]
    except (OSError, ValueError):
        return -1


def test_killed_run_resumes_to_identical_weights(synth_data, tmp_path):
    whole = tmp_path / "whole"
    summary = Trainer(load_recipe(None, _overrides(synth_data, whole)), progress=False).fit()
    total_steps = summary["steps"]
    assert total_steps == 3 * (240 // 8)

    # the killed run reads its images from disk at every step, on a loader process:
    # its batches, and the resumed run's, must be those of the cached run above
    killed = tmp_path / "killed"
    uncached = [*_overrides(synth_data, killed), "data.cache_images=false", "data.num_workers=1"]
    cmd = [sys.executable, "-m", "vlret.cli", "train", "--quiet", *uncached]
    # the same thread count as this process: float reductions, and so the weights, depend on it
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _last_step(killed) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = _last_step(killed)
    assert 8 <= stopped_at < total_steps, f"the run was not killed mid-way (last checkpoint {stopped_at})"

    resumed = Trainer(load_recipe(None, uncached), resume=True, progress=False)
    assert loader_workers(resumed.recipe.data.num_workers, resumed.source) == 1
    resumed.fit()
    assert _last_step(killed) == total_steps
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoints_logs_and_best_on_val(synth_data, tmp_path):
    out = tmp_path / "run"
    Trainer(load_recipe(None, _overrides(synth_data, out, epochs=2)), progress=False).fit()
    ckpts = out / "checkpoints"
    assert (ckpts / "last").is_symlink() and (ckpts / "best").is_symlink()
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) >= ["best", "last"]
    assert not list(ckpts.glob(".*tmp"))  # nothing half-written left behind
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert (
        len(val) == 2 and {"infonce", "hinge", "loss", "lr", "samples_per_s", "grad_norm"} <= train[0].keys()
    )
    assert train[0]["loss"] == pytest.approx(train[0]["infonce"] + 0.1 * train[0]["hinge"], rel=1e-5)
    best_step = json.loads((ckpts / "best" / "meta.json").read_text())["step"]
    best_val = max(val, key=lambda r: r["rsum"])
    assert best_step == best_val["step"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_short_training_lifts_recall_far_above_chance(tmp_path):
    data = write_benchmark(tmp_path / "easy", SynthConfig(images=400, seed=5, difficulty=0.0))
    recipe = load_recipe(
        None,
        [
            f"data.path={data}",
            f"output_dir={tmp_path / 'run'}",
            "train.epochs=8",
            "train.batch_size=64",
            "optim.lr=1e-3",
            "schedule.warmup_steps=20",
            "eval.every_epochs=8",
            "model.options.width=64",  # half the default width: R@1 0.21 here, in half the time
        ],
    )
    trainer = Trainer(recipe, progress=False)
    trainer.fit()
    result = evaluate_model(trainer.model, trainer.data, split="test", use_cache=False, progress=False)
    n_test = result["counts"]["gallery_items"]
    assert result["metrics"]["t2i_r1"] >= 6 / n_test, result["metrics"]  # six times chance or better


def test_gradient_accumulation_counts_optimiser_steps(synth_data, tmp_path):
    over = _overrides(synth_data, tmp_path / "acc", epochs=1)
    over = [o for o in over if not o.startswith("train.batch_size")]
    trainer = Trainer(
        load_recipe(None, [*over, "train.batch_size=8", "train.grad_accum_steps=3"]), progress=False
    )
    summary = trainer.fit()
    assert summary["steps"] == (240 // 8) // 3  # 30 micro-batches -> 10 optimiser steps
    train = [r for r in read_metrics(tmp_path / "acc" / "metrics.jsonl") if r["kind"] == "train"]
    assert train[-1]["step"] == 10 and train[-1]["samples_per_s"] > 0


class _Source:
    def __init__(self, decodes: bool):
        self.decodes_each_step = decodes


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8), (17, 8), (64, 8)])
def test_auto_workers_are_half_the_cores_when_a_gpu_trains_on_images_decoded_each_step(
    monkeypatch, cores, expected
):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert loader_workers("auto", _Source(decodes=True), "cuda") == expected
    assert loader_workers("auto", _Source(decodes=False), "cuda") == 0
    assert loader_workers("auto", _Source(decodes=True), "cpu") == 0  # the model's threads use the cores
    assert (
        loader_workers(3, _Source(decodes=False)) == 3
        and loader_workers(0, _Source(decodes=True), "cuda") == 0
    )


def test_a_source_decodes_each_step_only_without_its_cache(synth_data):
    from vlret.data import load_dataset
    from vlret.data.transforms import ImageTransform
    from vlret.train.recipe import DataSection

    split = load_dataset(synth_data).split("train")
    transform = ImageTransform(32, 32, (0.5,) * 3, (0.5,) * 3)
    assert not PairSource(split, transform, DataSection(cache_images=True)).decodes_each_step
    assert not PairSource(split, transform, DataSection(cache_images=True, hflip=True)).decodes_each_step
    assert PairSource(split, transform, DataSection(cache_images=False)).decodes_each_step
