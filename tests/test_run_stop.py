"""Stopping a training run with SIGTERM (issue 28, section 5): the run finishes its step, checkpoints and
returns; resumed, it ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vlret.train import Trainer, load_recipe
from vlret.train.checkpoint import load_checkpoint

STOP_AT = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-exact comparisons run single-threaded (see tests/test_resume_families.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recipe(data, out, epochs: int = 2):
    return load_recipe(
        None,
        [
            f"data.path={data}",
            f"output_dir={out}",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            "train.log_every_steps=1",
            "model.options={width: 16, embed_dim: 16, dropout: 0.1}",
        ],
    )


def test_sigterm_checkpoints_the_step_and_resume_is_exact(synth_data, tmp_path, monkeypatch):
    whole = Trainer(_recipe(synth_data, tmp_path / "whole"), progress=False)
    whole.fit()

    real = Trainer.train_step

    def step_then_signal(self, micro_batches, epoch):
        logged = real(self, micro_batches, epoch)
        if self.step == STOP_AT:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID`, torchrun or slurm would send it
        return logged

    before = signal.getsignal(signal.SIGTERM)  # not always the default: Ray, for one, installs its own
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", step_then_signal)
        summary = Trainer(_recipe(synth_data, tmp_path / "parted"), progress=False).fit()
    assert summary["steps"] == STOP_AT and "SIGTERM" in summary["stopped"]
    assert load_checkpoint(tmp_path / "parted" / "checkpoints", "last")[1]["step"] == STOP_AT
    assert signal.getsignal(signal.SIGTERM) is before  # the handler that was there is put back

    resumed = Trainer(_recipe(synth_data, tmp_path / "parted"), resume=True, progress=False)
    assert resumed.step == STOP_AT
    assert "stopped" not in resumed.fit()
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_vlret_train_stops_cleanly_on_sigterm(synth_data, tmp_path):
    out = tmp_path / "run"
    args = [f"data.path={synth_data}", f"output_dir={out}", "train.epochs=500", "train.batch_size=8"]
    args += ["train.log_every_steps=1", "model.options={width: 16, embed_dim: 16}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "vlret.cli", "train", *args, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):  # training has started
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate()
    assert run.returncode == 0, stderr[-2000:]
    assert "stopped on SIGTERM" in stderr and "--resume" in stderr
    summary = json.loads(stdout)
    _, state = load_checkpoint(out / "checkpoints", "last")
    assert "stopped" in summary and state["step"] == summary["steps"]


def test_a_worker_dies_with_its_launcher(tmp_path):
    """What torchrun's workers now do: a child that called die_with_launcher goes when its parent is killed
    (without it, workers in sessions of their own outlived a `kill -9` of torchrun and went on training)."""
    pid_file = tmp_path / "child.pid"
    child = (
        "import os, time; from vlret.train.distributed import die_with_launcher; die_with_launcher(); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(3600)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); time.sleep(600)"
    )
    launcher = subprocess.Popen([sys.executable, "-c", parent])
    while not pid_file.is_file() or not pid_file.read_text():
        assert launcher.poll() is None
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    launcher.kill()
    launcher.wait()
    # the kernel sends the worker SIGKILL at once; 120 s only bounds the test should that not happen
    deadline = time.monotonic() + 120
    while _alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its launcher"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
