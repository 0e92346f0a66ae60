"""Set-up hooks that the Ray tests install in every Ray worker process (``worker_process_setup_hook``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def start_ray_with(hook: str, marker: Path):
    """A local Ray cluster whose every worker runs ``hook`` (a function of this module) at start, with the
    kill marker file ``marker``; returns the ``ray`` module (shut it down after)."""
    import ray

    tests = str(Path(__file__).parent)
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": f"ray_worker_hooks.{hook}",
            "env_vars": {
                "VLRET_TEST_KILL_MARKER": str(marker),
                "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
            },
        },
    )
    return ray


def die_in_the_first_chunk() -> None:
    """The first worker to encode a chunk is killed in the middle of it (SIGKILL: no clean-up runs);
    workers started after that, such as the one Ray retries the task on, encode normally, and each chunk
    they encode is logged (a line per chunk in ``MARKER.log``)."""
    import vlret.index.build as build

    marker = Path(os.environ["VLRET_TEST_KILL_MARKER"])
    encode = build._encode_chunk

    def encode_or_die(*args, **kwargs):
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            done = encode(*args, **kwargs)
            with marker.with_suffix(".log").open("a") as log:
                log.write(f"{os.getpid()}\n")
            return done
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    build._encode_chunk = encode_or_die


def die_in_a_visa_unit() -> None:
    """The first worker to compute its third VISA unit is killed while it holds that unit's claim; the
    units it stored before stay stored. Later workers compute normally."""
    from vlret.rerank.visa import pipeline

    marker = Path(os.environ["VLRET_TEST_KILL_MARKER"])
    compute_once = pipeline.Visa._compute_once
    calls = []

    def compute_or_die(self, stage, key, compute):
        calls.append(key)
        if len(calls) == 3:
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return compute_once(self, stage, key, compute)
            os.write(fd, f"{os.getpid()} {stage}.{key}".encode())
            os.close(fd)
            self.claims.try_claim(f"{stage}.{key}")  # hold the unit, as a worker computing it does
            os.kill(os.getpid(), signal.SIGKILL)
        return compute_once(self, stage, key, compute)

    pipeline.Visa._compute_once = compute_or_die


def record_threads() -> None:
    """Each chunk a worker encodes logs torch's thread count at that moment (a line in ``MARKER.log``)."""
    import torch

    import vlret.index.build as build

    log = Path(os.environ["VLRET_TEST_KILL_MARKER"]).with_suffix(".log")
    encode = build._encode_chunk

    def encode_and_log(*args, **kwargs):
        with log.open("a") as out:
            out.write(f"{torch.get_num_threads()}\n")
        return encode(*args, **kwargs)

    build._encode_chunk = encode_and_log
