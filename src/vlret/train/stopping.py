"""Stopping a run cleanly on SIGTERM: the signal torchrun passes on to every worker when it is stopped, that
slurm sends before a job's time limit, and that ``kill PID`` sends. The run finishes the step it is in,
writes a checkpoint and returns, so ``--resume`` goes on from exactly there. With several processes they agree
(an all-reduce of the flag after every step) to stop after the same step, since one that stopped alone would
leave the others waiting in a collective.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from vlret.train.distributed import DistInfo


class StopRequest:
    """A flag SIGTERM raises while :meth:`listening`; :meth:`agreed` reads it across processes."""

    def __init__(self) -> None:
        self.signalled = False

    @contextmanager
    def listening(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def agreed(self, info: DistInfo) -> bool:
        """True once any process has been asked to stop (the same answer on every process)."""
        if not info.enabled:
            return self.signalled
        flag = torch.tensor([int(self.signalled)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
