"""Micro-batching: concurrent requests share one model call.

Requests go into a queue that one worker thread empties: it takes the first request, gathers whatever else
arrives within ``window`` seconds (up to ``max_batch``), and runs ``fn`` once on the group. Requests that
arrive while a call runs form the next group. At low load a request pays at most the window; at high load
groups grow and the model makes far fewer, larger calls, which is where the throughput comes from (one text
at a time leaves most of a CPU's matrix units idle). When a group's call fails, each of its requests runs
alone, so a request that fails (an unreadable image, say) fails by itself.

The worker is a thread, not an asyncio task, so requests from any thread or event loop can share it.
"""

from __future__ import annotations

import asyncio
import atexit
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class MicroBatcher:
    """``await batcher(item)`` (or ``batcher.submit(item).result()``) returns ``fn([... item ...])[position]``.

    ``lock`` (optional) is held around each call of ``fn``: batchers that share a model share its lock.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], list[Any]],
        max_batch: int = 32,
        window: float = 0.001,
        lock: threading.Lock | None = None,
        name: str = "vlret-batcher",
    ):
        self.fn, self.max_batch, self.window = fn, max_batch, window
        self.lock = lock or threading.Lock()
        self.calls = 0  # calls of fn (for tests and benchmarks)
        self._queue: queue.SimpleQueue[tuple[Any, Future | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a worker still waiting at interpreter exit can abort the process

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        if self._thread.is_alive():
            self._queue.put((None, None))
            self._thread.join(timeout=5)

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        return future

    async def __call__(self, item: Any) -> Any:
        return await asyncio.wrap_future(self.submit(item))

    def _gather(self) -> list[tuple[Any, Future]]:
        group = [self._queue.get()]
        deadline = time.monotonic() + self.window
        while len(group) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # after the window, only what is already queued joins
                group.append(
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return group

    def _work(self) -> None:
        while True:
            gathered = self._gather()
            group = [(i, f) for i, f in gathered if f is not None and f.set_running_or_notify_cancel()]
            if group:
                self._run(group)
            if any(future is None for _, future in gathered):  # close() was called
                return

    def _run(self, group: list[tuple[Any, Future]]) -> None:
        try:
            with self.lock:
                self.calls += 1
                results = self.fn([item for item, _ in group])
        except Exception as exc:  # noqa: BLE001 - handed to the request(s) it belongs to
            if len(group) == 1:
                group[0][1].set_exception(exc)
            else:  # one bad request must not fail the others: each runs alone and gets its own outcome
                for one in group:
                    self._run([one])
            return
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)
