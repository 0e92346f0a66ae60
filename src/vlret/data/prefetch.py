"""Producing the next items of an iterator on a background thread while the consumer works on the current one.

Decoding images and videos (Pillow, PyAV) and encoding them (torch) both release the GIL, so the two overlap:
the training loop and the batched encoders read their inputs through :func:`prefetch`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def prefetch(batches: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Produce the next ``depth`` items of ``batches`` on a background thread while the consumer works.

    Items arrive in order, exactly as a plain loop would give them; an exception raised while producing one
    is raised again in the consumer. The thread stops when the consumer does (a loop left early, or an
    iterator dropped, leaves no thread behind: closing waits for the item in production).
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            put(exc)
            return
        put(done)

    worker = threading.Thread(target=fill, name="vlret-prefetch", daemon=True)
    worker.start()
    try:
        while (batch := slots.get()) is not done:
            if isinstance(batch, BaseException):
                raise batch
            yield batch
    finally:
        stop.set()
        # wait for the item in production: a thread still inside torch or a decoder when the interpreter
        # exits aborts the process ("terminate called without an active exception")
        worker.join()
