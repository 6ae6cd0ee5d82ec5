"""Multi-process training under torchrun: one process per device, DDP, rank 0 writes.

Single-process runs (no WORLD_SIZE in the environment, or WORLD_SIZE=1) never touch
torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgeseg.runtime import resolve_device


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device_name: str) -> Process:
    """Join the torchrun process group when there is one (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Process(0, 1, resolve_device(device_name))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), device)


def stop(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(process: Process, *values: float) -> list[float]:
    """Sum scalars over all processes (identity in a single process)."""
    if not process.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=process.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def share_buffers(process: Process, model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers only at the start of a training forward, so after an epoch each rank
    holds the statistics of its own last batch; evaluating a shard with those would make
    the all-reduced confusion matrix disagree with the checkpoint rank 0 saves.
    """
    if not process.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, 0)


def broadcast_text(process: Process, text: str) -> str:
    """Rank 0's string, on every rank (sent as bytes, never pickled)."""
    if not process.distributed:
        return text
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=process.device)
    length = torch.tensor([data.numel()], device=process.device)
    dist.broadcast(length, 0)
    buffer = data if process.is_main else torch.zeros(int(length.item()), dtype=torch.uint8, device=process.device)
    dist.broadcast(buffer, 0)
    return bytes(buffer.cpu().tolist()).decode()
