"""VISA's shards as Ray tasks (``vlret rerank visa --engine ray``; the ``ray`` extra).

Each task is one shard of the run (:meth:`vlret.rerank.visa.pipeline.Visa.work_shard`: its share of the
descriptions, questions and answers, then whatever relevance scores are complete), with its own role
clients built from the config; the driver merges the shards when all are done. The units a task stored
before its worker died stay stored, and the task Ray runs again takes over the dead worker's unit claims,
so a retry redoes only unfinished units. Tasks on other machines need the data and ``out`` at the same
paths (a shared file system); the model servers the config names must be reachable from every worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlret.data.records import RetrievalDataset
from vlret.ray_cluster import check_workers, connected
from vlret.rerank.visa.config import VisaConfig
from vlret.rerank.visa.run import merge_visa, run_visa


def _run_shard(
    split, candidates, base_topk, base_ranks, config, out, shard, source, query_limit, threads
) -> None:
    torch.set_num_threads(threads)  # local role models run on as many threads as the task asked Ray for
    run_visa(
        split, candidates, base_topk, base_ranks, config, out, shard, source=source, query_limit=query_limit
    )


def run_visa_with_ray(
    split: RetrievalDataset,
    candidates: np.ndarray,
    base_topk: np.ndarray,
    base_ranks: np.ndarray,
    config: VisaConfig,
    out: str | Path,
    workers: int = 2,
    address: str | None = None,
    source: dict | None = None,
    query_limit: int | None = None,
    threads_per_worker: int = 1,
    max_retries: int = 3,
) -> dict:
    """Run ``workers`` shards of a VISA run as Ray tasks on a local cluster (``address`` None) or an
    existing one, then merge them here; returns the result, as :func:`~vlret.rerank.visa.run.run_visa`.
    Each task asks Ray for ``threads_per_worker`` CPUs and runs torch on as many threads."""
    check_workers(workers)
    with connected(address) as ray:
        task = ray.remote(num_cpus=threads_per_worker, max_retries=max_retries)(_run_shard)
        shared = [ray.put(x) for x in (split, candidates, base_topk, base_ranks)]
        ray.get(
            [
                task.remote(*shared, config, str(out), (i, workers), source, query_limit, threads_per_worker)
                for i in range(workers)
            ]
        )
    return merge_visa(split, config, out)
