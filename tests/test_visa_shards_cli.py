"""VISA shards from the command line (issue 28, section 4): the hint a shard prints is the whole merge
command, and followed verbatim it merges with the config the shards recorded."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from ray_worker_hooks import start_ray_with
from vlret.cli import main


def test_the_printed_merge_command_works_as_printed(synth_data, tmp_path, capsys):
    config = tmp_path / "visa.yaml"
    config.write_text("k: 5\n")
    out = tmp_path / "run"
    args = ["rerank", "visa", "--model", "tiny-cnn", "--data", str(synth_data), "--split", "val"]
    args += ["--config", str(config), "--queries", "6", "--out", str(out)]
    assert main([*args, "--shard", "0/2"]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    command = hint.split("when every shard is done: ", 1)[1]
    assert "--split val" in command
    assert main([*args, "--shard", "1/2"]) == 0
    capsys.readouterr()
    words = shlex.split(command)
    assert words[:3] == ["vlret", "rerank", "visa-merge"]
    assert main(words[1:]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["visa"]["k"] == 5 if "visa" in result else True
    assert result["data"]["split"] == "val"


def test_merging_with_another_config_is_refused(synth_data, tmp_path):
    out = tmp_path / "run"
    args = [
        "rerank",
        "visa",
        "--model",
        "tiny-cnn",
        "--data",
        str(synth_data),
        "--queries",
        "4",
        "--out",
        str(out),
    ]
    assert main([*args, "--shard", "0/2"]) == 0
    assert main([*args, "--shard", "1/2"]) == 0
    other = tmp_path / "other.yaml"
    other.write_text("k: 3\n")
    merge = ["rerank", "visa-merge", "--data", str(synth_data), "--config", str(other), "--out", str(out)]
    assert main(merge) == 2
    with pytest.raises(SystemExit):
        main(["rerank", "visa-merge", "--data", str(synth_data)])  # --out is required


def test_visa_on_a_local_ray_cluster_equals_one_process(synth_data, tmp_path, capsys, monkeypatch):
    """`--engine ray --workers 2`: the shards run as Ray tasks and are merged; the result and every
    stage's unit count equal one process's, and no description is made twice."""
    ray_module = pytest.importorskip("ray")  # in the test extra: CI has it
    args = ["rerank", "visa", "--model", "tiny-cnn", "--data", str(synth_data), "--queries", "8"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    addresses = []
    real_init = ray_module.init

    def init(*a, **kw):
        addresses.append(kw.get("address"))
        return real_init(*a, **kw)

    monkeypatch.setattr(ray_module, "init", init)
    # --address reaches Ray's connect; "local" is Ray's word for a new cluster on this machine
    ray_args = ["--engine", "ray", "--workers", "2", "--threads-per-worker", "1", "--address", "local"]
    assert main([*args, "--out", str(tmp_path / "ray"), *ray_args]) == 0
    assert addresses == ["local"]
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    ray = json.loads((tmp_path / "ray" / "result.json").read_text())
    assert ray["metrics"] == one["metrics"]
    shards = [json.loads((tmp_path / "ray" / f"shard-{i}-of-2.json").read_text()) for i in range(2)]
    for stage in ("descriptions", "questions", "answers"):
        assert sum(s["stages"][stage]["computed"] for s in shards) == one["stages"][stage]["computed"] > 0
    assert main([*args, "--out", str(tmp_path / "x"), "--engine", "ray", "--shard", "0/2"]) == 2
    assert "give one or the other" in capsys.readouterr().err


def test_a_visa_shard_whose_ray_worker_is_killed_is_retried(synth_data, tmp_path):
    """A Ray worker dies (SIGKILL) holding the claim of a VISA unit: Ray runs the shard again, the units
    stored before the kill are kept, the dead worker's claim is taken over, and the result equals one
    process's."""
    import os

    pytest.importorskip("ray")
    from vlret.data import load_dataset
    from vlret.rerank.visa.config import VisaConfig
    from vlret.rerank.visa.ray_engine import run_visa_with_ray
    from vlret.rerank.visa.run import base_from_scores, run_visa

    split = load_dataset(synth_data).split("test")
    scores = np.random.default_rng(0).normal(size=(len(split.captions), len(split.items))).astype(np.float32)
    config = VisaConfig(k=4, concurrency=1)
    base = base_from_scores(scores, split, config.k)
    one = run_visa(split, *base, config, tmp_path / "one")
    marker = tmp_path / "killed"
    ray = start_ray_with("die_in_a_visa_unit", marker)
    try:
        merged = run_visa_with_ray(split, *base, config, tmp_path / "ray", workers=2)
    finally:
        ray.shutdown()
    pid, unit = marker.read_text().split()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert not (tmp_path / "ray" / "claims" / f".{unit}.claim").exists()  # taken over and released
    assert merged["metrics"] == one["metrics"]
