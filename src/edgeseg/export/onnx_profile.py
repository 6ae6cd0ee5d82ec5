"""``edgeseg info`` on an exported file: the convs of an ONNX graph with their parameters,
MACs and weight sparsity, read from the graph itself (shapes by ONNX shape inference), so
the deployed artifact is described by what it holds rather than by the model it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgeseg.errors import ModelError
from edgeseg.layout import BUNDLE_MODEL


@dataclass(frozen=True)
class OnnxConv:
    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int
    dilation: int
    groups: int
    output_size: tuple[int, int] | None
    params: int
    zeros: int

    @property
    def macs(self) -> int:
        if self.output_size is None:
            return 0
        return self.output_size[0] * self.output_size[1] * self.out_channels * (
            self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]


@dataclass(frozen=True)
class OnnxProfile:
    path: Path
    opset: int
    nodes: int
    op_counts: dict[str, int]
    input_shape: list
    convs: list[OnnxConv]
    metadata: dict[str, str]


def onnx_file(path: str | Path) -> Path:
    """The ONNX file of ``path``: the file itself or a bundle's model.onnx."""
    path = Path(path)
    if path.is_dir() and (path / BUNDLE_MODEL).is_file():
        return path / BUNDLE_MODEL
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file or bundle")
    return path


def profile_onnx(path: str | Path) -> OnnxProfile:
    """Every Conv of the graph (weights read through DequantizeLinear for int8 files)."""
    path = onnx_file(path)
    try:
        model = shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        raise ModelError(f"{path}: not a readable ONNX file ({str(err).splitlines()[0]})") from None
    graph = model.graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    dequantized = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.output, *graph.input]}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight = tensors.get(dequantized.get(node.input[1], node.input[1]))
        if weight is None:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        groups = int(attributes.get("group", 1))
        shape = shapes.get(node.output[0])
        size = (shape[2], shape[3]) if shape and all(isinstance(s, int) and s for s in shape[2:4]) else None
        convs.append(OnnxConv(node.name or node.output[0], weight.shape[1] * groups, weight.shape[0],
                              tuple(weight.shape[2:4]), int(attributes.get("strides", [1])[0]),
                              int(attributes.get("dilations", [1])[0]), groups, size, int(weight.size),
                              int(np.count_nonzero(weight == 0))))
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxProfile(path, opset, len(graph.node), dict(sorted(counts.items(), key=lambda kv: -kv[1])),
                       shapes.get(graph.input[0].name, []), convs,
                       {entry.key: entry.value for entry in model.metadata_props})
