"""Data loading: one pass over a split (decode + normalise to tensors) from disk vs from the in-memory cache,
measured side by side in one run; plus the cost of filling the cache.

    python bench/data_loading.py [--data camvid:../shared/data/camvid] [--split train] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from edgeseg.data.spec import open_dataset
from edgeseg.data.transforms import EvalTransform


def one_pass(dataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="camvid:../shared/data/camvid")
    parser.add_argument("--split", default="train")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    uncached = open_dataset(args.data, args.split, transform=EvalTransform())
    start = time.perf_counter()
    cached = open_dataset(args.data, args.split, transform=EvalTransform(), cache=True).preload()
    fill = time.perf_counter() - start
    mbytes = sum(a.nbytes + b.nbytes for a, b in cached._cache.values()) / 2**20

    disk, memory = [], []
    for _ in range(args.repeats):
        disk.append(one_pass(uncached))
        memory.append(one_pass(cached))
    n = len(uncached)
    rows = [
        ("decode from disk", statistics.median(disk), n / statistics.median(disk)),
        ("from cache", statistics.median(memory), n / statistics.median(memory)),
    ]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"dataset: {args.data} [{args.split}], {n} images; cache filled in {fill:.2f} s, {mbytes:.0f} MiB")
    print(f"{'path':<18} {'s / pass (median of ' + str(args.repeats) + ')':>26} {'images/s':>10}")
    for name, seconds, rate in rows:
        print(f"{name:<18} {seconds:>26.2f} {rate:>10.0f}")
    print(f"speed-up from cache: {rows[0][1] / rows[1][1]:.0f}x")


if __name__ == "__main__":
    main()
