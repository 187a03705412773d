"""Where a training process stands: one process, or one of ``WORLD_SIZE`` started by torchrun (DDP).

Under torchrun the device is ``cuda:LOCAL_RANK`` (never ``cuda:RANK``: on node 2 of 2x8 GPUs RANK is 8..15)
with NCCL; with ``--device cpu`` or without CUDA, the CPU with gloo. The collectives here are no-ops in a
one-process run, so a trainer calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import RSGeoPruneError
from .device import choose_device


@dataclass
class Dist:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(device: str | None = None) -> Dist:
    """One process, or one of ``WORLD_SIZE`` started by torchrun (the process group is made here)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=choose_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if device is not None and not device.startswith(("cuda", "cpu")):
        raise RSGeoPruneError(f"device {device!r}: multi-process training runs on cuda (NCCL) or cpu (gloo)")
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        # rank 0 samples and computes FD between steps while the others wait in the next all-reduce: a long timeout
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=60), **kwargs)
    return Dist(rank=rank, local_rank=local_rank, world=world, device=dev)


def teardown_distributed(d: Dist) -> None:
    """End the process group :func:`setup_distributed` made (a no-op for one process)."""
    if d.active:
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    """Every rank waits for all the others (a no-op for one process)."""
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """``t`` summed over all ranks, in place (unchanged for one process)."""
    if d.active:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def all_reduce_min(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """``t`` the minimum over all ranks, in place (unchanged for one process)."""
    if d.active:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def wrap_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` in a multi-process run, else itself.

    No ``device_ids`` on the CPU; on a GPU the process's own device (from LOCAL_RANK). Buffers are not
    broadcast before every forward (``forward_sync_buffers=False``: a DiT's only buffer is its constant position
    table, synced once at construction), and gradients live in the all-reduce buckets (one copy fewer: 2.7 GB for
    XL/2)."""
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(
        model,
        device_ids=[d.device.index] if d.device.type == "cuda" else None,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
    )


__all__ = [
    "Dist",
    "all_reduce_min",
    "all_reduce_sum",
    "barrier",
    "setup_distributed",
    "teardown_distributed",
    "wrap_ddp",
]
