"""Portable ONNX, measured: the fp32 graph as torch's exporter writes it and after onnxscript's
optimizer (what `edgeseg export` writes), node counts by op type, and OpenCV DNN's argmax
agreement with ONNX Runtime on each. A model directory, or an untrained architecture with
trained-looking BatchNorm statistics (node counts do not depend on weights).

    python bench/onnx_portable.py --arch swiftnet --args '{"width": 0.5, "decoder": 64}' --size 360 480
    python bench/onnx_portable.py MODEL_DIR --data camvid:../shared/data/camvid --images 4
"""

from __future__ import annotations

import argparse
import collections
import copy
import json

import numpy as np
import onnx
import torch

from edgeseg.compress.quant.stage import pad_to_stride
from edgeseg.data.spec import open_dataset
from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from edgeseg.export.onnx import to_onnx
from edgeseg.export.onnx_graph import optimize_graph
from edgeseg.export.opencv_check import OpenCVLoadError, compare_with_opencv
from edgeseg.models import create_model, load_model_dir


@torch.no_grad()
def untrained(arch: str, args: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, 12, **args).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.uniform_(-1.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    return model


def inputs(spec: str | None, count: int, size: tuple[int, int], mean, std) -> list[np.ndarray]:
    if spec is None:
        rng = np.random.default_rng(0)
        return [rng.standard_normal((1, 3, *size)).astype(np.float32) for _ in range(count)]
    dataset = open_dataset(spec, "val")
    dataset.transform = EvalTransform(mean, std)
    images = [dataset[int(i * len(dataset) / count)][0] for i in range(count)]
    return [torch.nn.functional.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2]))[None].numpy()
            for x in images]


def describe(proto: onnx.ModelProto, images: list[np.ndarray], top: int) -> tuple[int, str, str]:
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    breakdown = ", ".join(f"{op} {n}" for op, n in ops.most_common(top))
    try:
        result = compare_with_opencv(proto, images, 0.999)
        opencv = f"{100 * result.agreement:.2f} % (max abs diff {result.max_abs_diff:.2g})"
        if result.first_difference:
            opencv += f", first differing node output: {result.first_difference}"
    except OpenCVLoadError as err:
        opencv = f"cannot run: {str(err)[:120]}"
    return len(proto.graph.node), breakdown, opencv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="model directory (else --arch)")
    parser.add_argument("--arch", default="swiftnet")
    parser.add_argument("--args", default='{"width": 0.5, "decoder": 64}', help="architecture arguments (JSON)")
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480))
    parser.add_argument("--data", help="compare on this dataset's val images (default: random inputs)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="op types listed")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    if opts.model:
        loaded = load_model_dir(opts.model)
        model, name, mean, std = loaded.model.eval(), opts.model, loaded.config.mean, loaded.config.std
    else:
        model = untrained(opts.arch, json.loads(opts.args), opts.seed)
        name, mean, std = f"{opts.arch} {opts.args} (untrained)", IMAGENET_MEAN, IMAGENET_STD
    size = tuple(pad_to_stride(torch.zeros(1, *opts.size), model.output_stride).shape[-2:])
    images = inputs(opts.data, opts.images, size, mean, std)
    exported = to_onnx(copy.deepcopy(model), size)
    optimized = optimize_graph(exported)
    convs = sum(1 for node in optimized.graph.node if node.op_type == "Conv")
    print(f"{name}, {size[0]}x{size[1]}, {convs} convs, OpenCV vs ONNX Runtime on {len(images)} "
          f"{'images of ' + opts.data if opts.data else 'random inputs'}\n")
    print("| graph | nodes | OpenCV argmax agreement | op types |")
    print("|---|---|---|---|")
    for label, proto in (("as exported", exported), ("optimized (written)", optimized)):
        count, breakdown, opencv = describe(proto, images, opts.top)
        print(f"| {label} | {count} | {opencv} | {breakdown} |")


if __name__ == "__main__":
    main()
