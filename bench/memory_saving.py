"""Peak memory and step time of one training step with and without gradient checkpointing
(the training config's ``memory_saving``), on a model built from the registry.

Each mode's memory is measured in a process of its own, so peaks do not mix; step times in one
process, the two modes' steps interleaved. Peak memory: on CUDA
torch.cuda.max_memory_allocated over a step; on the CPU the peak resident set of the second
training step above the resident set just before it (Linux /proc: clear_refs resets the
peak; glibc's mmap threshold fixed so freed blocks leave it), plus the bytes autograd saved
for backward (allocator-independent; a tensor saved by two ops counts twice, so it can exceed
the peak). The size is rounded up to the model's output stride.

    python bench/memory_saving.py [--model swiftnet] [--arg width=0.5] [--size 360 480] [--batch 4]
                                  [--steps 5] [--device cpu] [--cpu-amp] [--modules stage1 stage2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from edgeseg.models import create_model
from edgeseg.models.stride import round_up
from edgeseg.schema import parse_value
from edgeseg.training.losses import head_loss, head_weights, multi_head_loss, pixel_loss
from edgeseg.training.memory_saving import enable_checkpointing, resolve_checkpoint_modules


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def training_step(args: argparse.Namespace, checkpointing: bool):
    """One mode's model and its training step: (step(count_saved) -> None, saved-bytes counter,
    checkpointed module names, input size)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model_args = {k: parse_value(v, f"{k}={v}") for k, v in (item.split("=", 1) for item in args.arg)}
    model = create_model(args.model, args.classes, **model_args).to(device).train()
    names = resolve_checkpoint_modules(model, args.modules or True, args.model) if checkpointing else []
    enable_checkpointing(model, names)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    size = round_up(args.size, getattr(model, "output_stride", 1))
    images = torch.randn(args.batch, 3, *size, device=device)
    labels = torch.randint(0, args.classes, (args.batch, *size), device=device)
    saved = [0]
    criterion, weights = pixel_loss(None, 255, None, 1 / 16), head_weights(model, None)

    def training_loss() -> torch.Tensor:
        """The engine's loss: every head of a multi-head model with its default weight."""
        if len(weights) > 1:
            return multi_head_loss(model, images, labels, criterion, weights, lean=checkpointing)[0]
        return head_loss(criterion, model(images), labels, lean=checkpointing)

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    def step(count_saved: bool = False) -> None:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if count_saved else _null()
        with hooks, torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                                   enabled=args.cpu_amp or device.type == "cuda"):
            loss = training_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, saved, names, size


def measure_time(args: argparse.Namespace) -> dict:
    """Median step time of both modes, their steps interleaved in this process so that a change
    in machine load hits both alike."""
    steps = {mode: training_step(args, mode == "checkpointed")[0] for mode in ("plain", "checkpointed")}
    times = {mode: [] for mode in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(args.steps):
        for mode, step in steps.items():
            started = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - started)
    return {mode: 1000 * statistics.median(values) for mode, values in times.items()}


def measure_memory(args: argparse.Namespace, checkpointing: bool) -> dict:
    """The peak memory of one mode's step, in a process of its own."""
    step, saved, names, size = training_step(args, checkpointing)
    device = torch.device(args.device)
    if device.type == "cuda":
        step()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(count_saved=True)
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        step()
        before = proc_status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        step(count_saved=True)
        peak_mib = (proc_status_kib("VmHWM") - before) / 1024
    return {"peak_mib": peak_mib, "saved_mib": saved[0] / 2**20, "modules": names, "size": size}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="swiftnet", help="a registered architecture")
    parser.add_argument("--arg", action="append", default=[], help="constructor argument key=value (repeatable)")
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-amp", action="store_true", help="bfloat16 autocast on the CPU")
    parser.add_argument("--modules", nargs="*", help="modules to checkpoint (default: the architecture's)")
    parser.add_argument("--child", choices=["plain", "checkpointed", "time"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure_time(args) if args.child == "time" else measure_memory(args, args.child == "checkpointed")
        print(json.dumps(result))
        return
    results = {"plain": {}, "checkpointed": {}}

    def child(what: str, env: dict | None = None) -> dict:
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", what],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"error: the {what} run failed:\n{proc.stderr.strip()}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    for mode in results:
        # a fixed mmap threshold, so glibc returns every large block on free and the resident set
        # follows the live tensors (for timing, malloc as usual: mmap per block is slow)
        results[mode].update(child(mode, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}))
    for mode, step_ms in child("time").items():
        results[mode]["step_ms"] = step_ms
    plain, ckpt = results["plain"], results["checkpointed"]
    print(f"python bench/memory_saving.py {shlex.join(sys.argv[1:])}")
    print(f"{args.model} {dict(a.split('=', 1) for a in args.arg)}, batch {args.batch} at {ckpt['size'][0]}x{ckpt['size'][1]},"
          f" {args.device}{' bf16 autocast' if args.cpu_amp else ''}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; checkpointed: {', '.join(ckpt['modules'])}")
    peak = "peak MiB (CUDA allocated)" if args.device.startswith("cuda") else "peak MiB (RSS above start)"
    print(f"| mode | {peak} | saved for backward MiB | step ms (median of {args.steps}, interleaved) |")
    print("|---|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['peak_mib']:.0f} | {r['saved_mib']:.0f} | {r['step_ms']:.0f} |")
    print(f"| change | {100 * (ckpt['peak_mib'] / plain['peak_mib'] - 1):+.0f} % | "
          f"{100 * (ckpt['saved_mib'] / plain['saved_mib'] - 1):+.0f} % | "
          f"{100 * (ckpt['step_ms'] / plain['step_ms'] - 1):+.0f} % |")


if __name__ == "__main__":
    main()
