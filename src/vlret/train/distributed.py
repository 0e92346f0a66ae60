"""Data-parallel helpers: process-group set-up from ``torchrun``'s environment, feature gathering with
gradients, and gradient averaging.

Features are gathered with ``torch.distributed.nn.functional.all_gather``, whose backward sums the gradient
of each slice over all processes. Every process computes the same loss on the gathered batch, so each holds
``world_size`` times its share of the full-batch gradient; averaging parameter gradients over processes then
gives exactly the gradient of one process on the whole batch.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    die_with_launcher()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def die_with_launcher() -> None:
    """Have the kernel kill this worker when the process that launched it dies (Linux; elsewhere nothing).

    torchrun starts its workers in sessions of their own, so killing torchrun, or its process group, leaves
    them running: they went on training and appending to ``metrics.jsonl`` beside a resumed run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` from every process in rank order; gradients flow back to each process's slice."""
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_tokens_with_grad(
    tokens: torch.Tensor, mask: torch.Tensor, info: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token features ``[B, T, D]`` and masks ``[B, T]`` from every process, padded to the longest ``T``."""
    if not info.enabled:
        return tokens, mask
    length = torch.tensor([tokens.shape[1]], device=tokens.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    pad = int(length) - tokens.shape[1]
    if pad:
        tokens = torch.nn.functional.pad(tokens, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    return gather_with_grad(tokens, info), gather_no_grad(mask, info)


def gather_no_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def average_gradients(parameters: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` over processes with one flattened all-reduce (what DDP does, without overlap)."""
    if not info.enabled:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
