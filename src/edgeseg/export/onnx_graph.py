"""Graph passes on exported ONNX models: int8 weights and int32 biases for the QDQ format that
ONNX Runtime turns into integer kernels, the optimizer every export goes through, and the
metadata every edgeseg export carries."""

from __future__ import annotations

import re
from pathlib import PureWindowsPath

import numpy as np
import onnx
import onnxscript
from onnx import numpy_helper

INT32_MAX = 2 ** 31 - 1


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs as arrays."""
    values = {name: numpy_helper.to_array(init) for name, init in _initializers(model).items()}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """QuantizeLinear on a constant (a weight) becomes the int8 constant it computes, which the
    DequantizeLinear after it then reads directly. Returns how many were folded."""
    constants = _constants(model)
    kept, folded = [], 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and all(name in constants for name in node.input):
            x, scale = constants[node.input[0]].astype(np.float64), constants[node.input[1]].astype(np.float64)
            zero_point = constants[node.input[2]] if len(node.input) > 2 else np.zeros((), np.uint8)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zp = scale.reshape(shape), zero_point.astype(np.int64).reshape(shape)
            else:
                zp = zero_point.astype(np.int64)
            info = np.iinfo(zero_point.dtype)
            levels = np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(zero_point.dtype)
            model.graph.initializer.append(numpy_helper.from_array(levels, node.output[0]))
            folded += 1
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return folded


def quantize_conv_biases(model: onnx.ModelProto) -> int:
    """Float biases of Convs between DequantizeLinear inputs become int32 at scale
    s_input x s_weight (per output channel) behind a DequantizeLinear: the form ONNX Runtime
    fuses into QLinearConv. Returns how many were quantized."""
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    new_nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) == 3 and node.input[2] in constants:
            data, weight = producers.get(node.input[0]), producers.get(node.input[1])
            if data is not None and weight is not None and data.op_type == weight.op_type == "DequantizeLinear":
                s_in = constants.get(data.input[1])
                s_w = constants.get(weight.input[1])
                if s_in is not None and s_w is not None and s_in.size == 1:
                    scale = (s_in.astype(np.float64).reshape(()) * s_w.astype(np.float64)).astype(np.float32)
                    bias = constants[node.input[2]].astype(np.float64)
                    levels = np.clip(np.rint(bias / scale.astype(np.float64)), -INT32_MAX, INT32_MAX).astype(np.int32)
                    base = node.input[2].replace(".", "_")
                    names = (f"{base}_int32", f"{base}_scale", f"{base}_zero_point", f"{base}_dequantized")
                    model.graph.initializer.extend([
                        numpy_helper.from_array(levels, names[0]),
                        numpy_helper.from_array(scale.reshape(-1) if scale.ndim else scale, names[1]),
                        numpy_helper.from_array(np.zeros(levels.shape, np.int32), names[2])])
                    new_nodes.append(onnx.helper.make_node("DequantizeLinear", list(names[:3]), [names[3]], axis=0,
                                                           name=f"{base}_DequantizeLinear"))
                    node.input[2] = names[3]
                    count += 1
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused_initializers(model)
    return count


def clip_activation_levels(model: onnx.ModelProto, qmax: int) -> int:
    """Low-bit activations: a uint8 Clip to 0..qmax between every activation QuantizeLinear
    and its consumers, so the integer engine stores the 2^bits levels the model was trained
    on (QuantizeLinear itself saturates only at 255). Returns how many were clipped."""
    constants = _constants(model)
    activations = [node for node in model.graph.node
                   if node.op_type == "QuantizeLinear" and node.input[0] not in constants]
    clipped = {node.output[0]: f"{node.output[0]}_clipped" for node in activations}
    for node in model.graph.node:
        node.input[:] = [clipped.get(name, name) for name in node.input]
    low, high = "low_bit_clip_min", "low_bit_clip_max"
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.uint8), low),
                                    numpy_helper.from_array(np.array(qmax, np.uint8), high)])
    new_nodes = []
    for node in model.graph.node:
        new_nodes.append(node)
        if node.output and node.output[0] in clipped:
            name = node.output[0]
            new_nodes.append(onnx.helper.make_node("Clip", [name, low, high], [clipped[name]], name=f"{name}_Clip"))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return len(clipped)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def optimize_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxscript's optimizer: constants folded (shape arithmetic included where shapes are
    fixed), no-op and dead nodes removed, constants as initializers. QuantizeLinear and
    DequantizeLinear are never folded, so QDQ pairs stay for ONNX Runtime's integer kernels.
    The opset is kept; set metadata afterwards."""
    return onnxscript.optimizer.optimize(model)


_SPEC_PREFIX = re.compile(r"^([A-Za-z][\w-]+:)(.*)$")  # "camvid:PATH"; one letter is a drive


def without_local_paths(value):
    """``value`` (JSON-like) with every string that is a file path reduced to its last
    component, a dataset spec's format kept ("camvid:/data/CamVid" -> "camvid:CamVid"). A
    path is text that starts with / ~ or a drive letter, or has a slash and no spaces."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_local_paths(item) for item in value]
    if not isinstance(value, str) or "://" in value:  # URLs are not local
        return value
    match = _SPEC_PREFIX.match(value)
    prefix, rest = match.groups() if match else ("", value)
    is_path = (rest.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", rest)
               or (re.search(r"[\\/]", rest) and not re.search(r"\s", rest)))
    if not is_path:
        return value
    return prefix + (PureWindowsPath(rest).name or rest.strip("/\\~"))
