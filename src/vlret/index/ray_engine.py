"""Index builds on a Ray cluster (``vlret index build --engine ray``; the ``ray`` extra).

The unit of work is the same as for any builder: output chunks, claimed so that no chunk is encoded twice
(:mod:`vlret.index.chunks`). Ray runs ``workers`` tasks, each the builder of one shard (chunks ``i, i + n,
...``); a task whose worker dies is retried by Ray, and its half-done chunk's claim, left by a dead process
on that host, is taken over. When every task is done the driver assembles the index from the chunks, so the
result is byte-equal to a one-process build. Workers on other machines need the collection and the output
folder at the same paths (a shared file system), as slurm array tasks do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlret.index.build import build_index
from vlret.ray_cluster import check_workers, connected


def _encode_shard(model_name: str, out: str, shard: tuple[int, int], threads: int, options: dict) -> None:
    torch.set_num_threads(threads)
    build_index(model_name, out, shard=shard, assemble=False, progress=False, **options)


def build_with_ray(
    model_name: str,
    out: str | Path,
    workers: int = 2,
    address: str | None = None,
    gpus_per_worker: float = 0,
    threads_per_worker: int = 1,
    max_retries: int = 3,
    progress: bool = True,
    **options,
) -> Path:
    """Encode the chunks as ``workers`` Ray tasks on a local cluster (``address`` None) or an existing one
    (``"auto"`` or ``ray://host:10001``), then assemble the index here; ``options`` are
    :func:`~vlret.index.build.build_index`'s.

    Each task asks Ray for ``threads_per_worker`` CPUs and runs torch on as many threads. The index is
    byte-equal to a one-process build on that many threads: CPU kernels reduce in an order that depends on
    the thread count (2 threads against 1 moved the tiny CNN's embeddings by up to 2.3e-7)."""
    check_workers(workers)
    with connected(address, log_to_driver=progress) as ray:
        task = ray.remote(num_cpus=threads_per_worker, num_gpus=gpus_per_worker, max_retries=max_retries)(
            _encode_shard
        )
        shards = [(i, workers) for i in range(workers)]
        ray.get([task.remote(model_name, str(out), shard, threads_per_worker, options) for shard in shards])

    return build_index(model_name, out, progress=progress, **options)  # every chunk is done: it assembles
