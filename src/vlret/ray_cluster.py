"""Connecting to Ray (the ``ray`` extra) for the commands that run work as Ray tasks: index builds
(:mod:`vlret.index.ray_engine`) and VISA (:mod:`vlret.rerank.visa.ray_engine`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vlret.errors import ConfigError


def ray_module():
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'vlret[ray]'") from None
    return ray


@contextmanager
def connected(address: str | None = None, log_to_driver: bool = True) -> Iterator[object]:
    """Ray, connected to a local cluster started here (``address`` None) or an existing one (``"auto"``
    or ``ray://host:10001``) and disconnected at the end; a connection made before is used and kept."""
    ray = ray_module()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def check_workers(workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
