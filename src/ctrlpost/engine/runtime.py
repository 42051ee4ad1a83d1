"""Where a process of the engine runs: its rank, its device, and how it joined the job.

Light at import (torch is imported inside :func:`init_distributed`): the command line asks
:func:`under_launcher` before it decides how to start the ranks.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The CUDA caching allocator grows segments in place instead of carving fixed blocks: at video
# lengths fixed blocks leave gigabytes reserved but unusable (bench/NOTES.md), which "auto"
# checkpointing would have to plan around. A user's own setting wins.
ALLOCATOR_CONF = ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def allocator_defaults() -> None:
    """Set :data:`ALLOCATOR_CONF` unless the environment has one; before CUDA's first use."""
    os.environ.setdefault(*ALLOCATOR_CONF)


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_launcher() -> bool:
    """True when torchrun (or a SLURM setup exporting its variables) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )


def init_distributed(backend: str) -> Runtime:
    """Join the job's process group (env:// under a launcher, else a one-process group)."""
    allocator_defaults()
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    chosen = "nccl" if cuda else "gloo"
    timeout = dt.timedelta(minutes=30)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(chosen, rank=rank, world_size=world, timeout=timeout,
                                device_id=device if cuda else None)
    else:
        dist.init_process_group(chosen, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return Runtime(rank=rank, world_size=world, local_rank=local_rank, device=device)


def current_runtime() -> Runtime:
    """This process's place in a process group it already joined (e.g. a test's, or a
    caller's that owns the group)."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Runtime(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=0,
                   device=device)
