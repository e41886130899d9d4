"""Data-parallel plumbing: one code path for 1 process and for ``torchrun --nproc_per_node N``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process group is initialised with
gloo on CPU and nccl on CUDA; every rank holds a full model, takes its contiguous slice of the
global batch (``get_batch`` hands the same global batch to any world size), and
DistributedDataParallel averages gradients during ``backward()``. Everything after that (grad
RMS normalisation, Adam, the top-k projection, weight decay) then runs on identical tensors on
every rank, so weights stay bit-identical across ranks without any further communication. Only
rank 0 writes files or shows progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparse_lens.errors import SparseLensError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this rank's GPU if CUDA is available, else CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SparseLensError(
            f"unknown device {name!r}; use auto, cpu or cuda[:N]", field="device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparseLensError(
            "CUDA is not available on this machine; use device=cpu", field="device"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; a single process needs nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistEnv(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_distributed(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(env: DistEnv, values: list[float]) -> list[float]:
    """Sum a few floats over ranks (one collective); identity for one process."""
    if not env.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(env: DistEnv, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (used to stop all ranks at one step)."""
    if not env.distributed:
        return flag
    return all_reduce_sum(env, [1.0 if flag else 0.0])[0] > 0


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
