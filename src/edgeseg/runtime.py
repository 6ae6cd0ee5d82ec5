"""Device choice and progress reporting shared by the commands."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

import torch

from edgeseg.errors import EdgesegError

T = TypeVar("T")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device if there is one, else the CPU; 'cuda[:N]' must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EdgesegError(f"--device: unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EdgesegError(f"--device {name}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EdgesegError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise EdgesegError(f"--device: unsupported device '{name}' (use auto, cpu, cuda or cuda:N)")
    return device


def interactive() -> bool:
    """True on a terminal outside CI: show live progress bars."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a transient progress bar on a terminal; silently elsewhere (CI, pipes)."""
    if not interactive():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, total=total, description=description, transient=True,
                          console=Console(stderr=True))
