"""Device choice and progress reporting shared by the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
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


def cpu_has_native_bfloat16() -> bool:
    """True where the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX). Elsewhere oneDNN
    emulates it: on an AVX2-only AMD EPYC (Zen 3) a bfloat16 training step ran 10x slower than
    float32 (bench/train_throughput.py: 1.1 against 11.1 images/s)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


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
