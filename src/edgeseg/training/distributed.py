"""Multi-process training under torchrun: one process per device, DDP, rank 0 writes.

Single-process runs (no WORLD_SIZE in the environment, or WORLD_SIZE=1) never touch
torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from edgeseg.runtime import resolve_device


_SINGLE_PROCESS = False  # set by single_process(): train alone even under torchrun


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # this start() made the process group, so its stop() ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device_name: str, timeout_minutes: float | None = None) -> Process:
    """Join the torchrun process group when there is one (NCCL on CUDA, gloo on CPU); a group
    already joined (by a pipeline running this training as a stage) is reused."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or _SINGLE_PROCESS:
        return Process(0, 1, resolve_device(device_name))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        timeout = {"timeout": timedelta(minutes=timeout_minutes)} if timeout_minutes else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **timeout)
    return Process(dist.get_rank(), dist.get_world_size(), device, owns)


def stop(process: Process) -> None:
    """Leave the process group if ``start`` made it."""
    if process.distributed and process.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(process: Process) -> None:
    """Wait until every process gets here (nothing in a single process)."""
    if process.distributed:
        dist.barrier()


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Within: training runs in this process alone even under torchrun (a pipeline stage that
    rank 0 runs by itself, such as quantization-aware fine-tuning)."""
    global _SINGLE_PROCESS
    previous, _SINGLE_PROCESS = _SINGLE_PROCESS, True
    try:
        yield
    finally:
        _SINGLE_PROCESS = previous


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
