"""Blueoil's low-bit scheme, measured: a float model and its low-bit twin (trained the same
way, e.g. configs/camvid-lmsegnet.yaml with and without 'quantize={scheme: low-bit}'),
each evaluated in PyTorch and, exported, in ONNX Runtime with all graph optimisations (fp32
ONNX for the float model, int8 ONNX for the low-bit one: binary weights as int8 +-127,
2-bit activations as uint8 0..3); weight storage; ONNX files timed side by side.

    python bench/lowbit_onnx.py FLOAT_DIR LOWBIT_DIR --data camvid:../shared/data/camvid
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from edgeseg.benchmark import measure_side_by_side
from edgeseg.compress.sample_images import labelled_images
from edgeseg.data.spec import open_dataset
from edgeseg.evaluation import evaluate
from edgeseg.export.onnx import export_onnx
from edgeseg.predict.predictors import OnnxPredictor, load_predictor
from edgeseg.models import load_model_dir
from edgeseg.models.blocks import ConvBNAct


def weight_megabytes(model_dir: Path) -> tuple[float, float]:
    """(float32 size of every parameter, size with the binary convs' weights at 1 bit and one
    float scale per output channel, everything else float32), in MB."""
    loaded = load_model_dir(model_dir)
    total = sum(p.numel() for p in loaded.model.parameters()) * 4
    packed = total
    for block in loaded.model.modules():
        if isinstance(block, ConvBNAct) and block.weight_quantizer is not None:
            weight = block.conv.weight
            packed -= weight.numel() * 4 - weight.numel() / 8 - weight.shape[0] * 4
    return total / 1e6, packed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_model", type=Path)
    parser.add_argument("low_bit_model", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lowbit-bench-"))
    val = open_dataset(args.data, "val")
    size = tuple(val.read(0)[1].shape)
    models = {"float": args.float_model, "low-bit": args.low_bit_model}
    rows, files = [], {}
    for name, model_dir in models.items():
        check = labelled_images(model_dir, args.data, "val", 8)
        miou = evaluate(load_predictor(model_dir, torch.device("cpu")), val, num_workers=0)["miou"]
        files[name] = work / f"{name}.onnx"
        metrics = export_onnx(model_dir, files[name], name == "low-bit", size, check)
        onnx_miou = evaluate(OnnxPredictor.from_file(files[name]), val, num_workers=0)["miou"]
        rows.append((name, miou, onnx_miou, metrics, *weight_megabytes(model_dir)))
    latency = measure_side_by_side({name: OnnxPredictor.from_file(path) for name, path in files.items()},
                                   size, runs=args.runs)

    print(f"\nlow-bit vs float on {args.data} val ({len(val)} images, full {size[0]}x{size[1]}); "
          f"latency batch 1, median of {args.runs}, interleaved, {torch.get_num_threads()} threads\n")
    print("| model | PyTorch val mIoU % | ONNX Runtime val mIoU % | export check: pixel agreement % | "
          "weights MB (float32) | weights MB (1-bit packed) | ONNX latency ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, miou, onnx_miou, metrics, megabytes, packed in rows:
        print(f"| {name} | {100 * miou:.2f} | {100 * onnx_miou:.2f} | {100 * metrics['agreement']:.2f} | "
              f"{megabytes:.2f} | {packed:.2f} | {latency[name]['latency_ms']:.1f} |")
    print(f"\nreproduce: python bench/lowbit_onnx.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
