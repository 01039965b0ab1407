"""Multi-process training with torchrun (DistributedDataParallel).

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process.
Backend: NCCL when CUDA is available, Gloo otherwise (CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import distributed as dist


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.world > 1:
            dist.barrier()

    def all_mean(self, value: float) -> float:
        """Mean of ``value`` over the processes."""
        if self.world == 1:
            return value
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world


def setup() -> Processes:
    """Join the process group that torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    processes = Processes(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(processes.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return processes
