"""Set-up hooks that the Ray tests install in every Ray worker process (``worker_process_setup_hook``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


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
