"""Training speed with and without bfloat16 autocast on the CPU (``cpu_amp``): the model step
(forward, loss, backward, Adam) on random batches, float32 and bfloat16 interleaved per
round, channels-last, for each model. Worth it only on CPUs with AMX or AVX-512 BF16; on
others bfloat16 is emulated and slower.

    python bench/cpu_amp.py [--rounds 3] [--steps 6] [--batch 8] [--crop 256 320]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from edgeseg.models import create_model

MODELS = {"swiftnet w0.25 d32": ("swiftnet", {"width": 0.25, "decoder": 32}),
          "swiftnet w0.5 d64": ("swiftnet", {"width": 0.5, "decoder": 64}),
          "jacintonet11_seg w0.5": ("jacintonet11_seg", {"width": 0.5}),
          "lmsegnet_v1": ("lmsegnet_v1", {}),
          "basic_encdec w16": ("basic_encdec", {})}


def images_per_second(model, optimizer, batch, labels, bf16: bool, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=(256, 320))
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = torch.randn(args.batch, 3, *args.crop).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 11, (args.batch, *args.crop))
    rates: dict[str, dict[bool, list[float]]] = {}
    for name, (arch, kwargs) in MODELS.items():
        model = create_model(arch, 11, **kwargs).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)
        rates[name] = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                rates[name][bf16].append(images_per_second(model, optimizer, batch, labels, bf16, args.steps))
    print(f"\ntraining step, batch {args.batch} of {args.crop[0]}x{args.crop[1]}, channels-last, "
          f"{torch.get_num_threads()} threads; median over {args.rounds} interleaved rounds of {args.steps} steps\n")
    print("| model | float32 img/s | bfloat16 img/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, by_mode in rates.items():
        fp32, bf16 = statistics.median(by_mode[False]), statistics.median(by_mode[True])
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |")
    print(f"\nreproduce: python bench/cpu_amp.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
