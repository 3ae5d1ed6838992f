"""DistributedDataParallel set-up from torchrun's environment (gloo on CPU, nccl on GPU).

The same `multidiff train` command runs as one process or under
`torchrun --nproc_per_node=N [--nnodes=M ...]`; rank 0 owns EMA, checkpoints, samples, logs.
`to_device` is how the engine and the tasks move batches onto the process's device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; start the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, local_world, dev)


def to_device(x, device):
    """Move a batch (a tensor, or a tuple/list/dict of them; anything else as is) to `device`.
    Host -> GPU copies are non-blocking: on CUDA the Trainer's DataLoader pins its batches, so the
    copy overlaps work already queued, and stream order makes it land before a kernel reads it
    (from unpinned memory CUDA stages the copy first, which is just as safe)."""
    device = torch.device(device)
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=device.type == "cuda" and x.device.type == "cpu")
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(to_device(v, device) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
