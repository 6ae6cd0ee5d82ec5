"""What pruned channel counts cost in ONNX Runtime: a model directory pruned uniformly to a keep
ratio with and without rounding each layer's kept filters to a multiple of 8
(`--channel-multiple 8`), against the unpruned model (and optionally other model directories),
fp32 at one size, timed side by side (interleaved runs, median). Weights do not change
latency, so no fine-tuning is needed to compare.

    python bench/prune_widths_latency.py MODEL_DIR [--keep 0.718] [--size 384 480] [--runs 20] [--also DIR ...]
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch

from edgeseg.compress.prune import hard_prune, plan_pruning
from edgeseg.export.onnx import to_onnx
from edgeseg.export.onnx_graph import optimize_graph
from edgeseg.models.model_dir import load_model_dir
from edgeseg.models.profile import profile_model
from edgeseg.predict.predictors import ort_session


def pruned(model: torch.nn.Module, keep: float, multiple: int) -> torch.nn.Module:
    model = copy.deepcopy(model)
    hard_prune(model, plan_pruning(model, keep, multiple=multiple))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--keep", type=float, default=0.718)
    parser.add_argument("--size", type=int, nargs=2, default=(384, 480))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="more model directories to time")
    args = parser.parse_args()
    dense = load_model_dir(args.model).model
    models = {"unpruned": dense, f"keep {args.keep}": pruned(dense, args.keep, 1),
              f"keep {args.keep}, multiple of 8": pruned(dense, args.keep, 8),
              **{str(path): load_model_dir(path).model for path in args.also}}
    size = tuple(args.size)
    sessions = {name: ort_session(optimize_graph(to_onnx(copy.deepcopy(m).eval(), size)).SerializeToString())
                for name, m in models.items()}
    image = torch.zeros(1, 3, *size).numpy()
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(3 + args.runs):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {"image": image})
            if index >= 3:
                times[name].append(1000 * (time.perf_counter() - started))
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    print(f"\nfp32 ONNX Runtime at {size[0]}x{size[1]}, {torch.get_num_threads()} threads, median of {args.runs} "
          f"interleaved runs\n")
    print("| model | GMACs | latency ms | speed-up |")
    print("|---|---:|---:|---:|")
    for name, model in models.items():
        print(f"| {name} | {profile_model(model, size).macs / 1e9:.3f} | {median[name]:.1f} | "
              f"{median['unpruned'] / median[name]:.2f}x |")
    print(f"\nreproduce: python bench/prune_widths_latency.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}")


if __name__ == "__main__":
    main()
