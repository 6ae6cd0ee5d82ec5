"""The export's second engine: an fp32 ONNX file run in OpenCV DNN next to ONNX Runtime, and,
when the two disagree, the first node whose output differs (found by exposing every float
node output of a scratch copy as a graph output and running it in both).

OpenCV is imported lazily: it is needed only here and for video.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime


class OpenCVLoadError(Exception):
    """OpenCV DNN could not read or run the file; the message is OpenCV's first line."""


@dataclass(frozen=True)
class OpenCVComparison:
    agreement: float  # fraction of pixels where OpenCV's argmax equals ONNX Runtime's
    max_abs_diff: float  # largest |logit difference| between the two
    first_difference: str | None  # when agreement fell short: the first node output that differs, or why not found


def compare_with_opencv(model: onnx.ModelProto, inputs: list[np.ndarray], min_agreement: float,
                        crops: list[tuple[int, int]] | None = None) -> OpenCVComparison:
    """Run every (1, 3, H, W) float32 input through ``model`` in OpenCV DNN and in ONNX Runtime
    (no graph optimisations: the file as written) and compare the ``logits`` argmax over the
    top-left ``crops`` (default: everything). Below ``min_agreement`` the first node whose
    output differs is located. Raises OpenCVLoadError when OpenCV cannot read or run it."""
    data = model.SerializeToString()
    net = _read_net(data)
    session = _plain_session(data)
    crops = crops or [x.shape[-2:] for x in inputs]
    same = total = 0
    max_diff = 0.0
    for x, (h, w) in zip(inputs, crops):
        ours = session.run(["logits"], {"image": x})[0][..., :h, :w]
        theirs = _forward(net, x, ["logits"])[0][..., :h, :w]
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        same += int((ours.argmax(1) == theirs.argmax(1)).sum())
        total += ours.shape[0] * h * w
    agreement = same / total
    differing = None
    if agreement < min_agreement:
        try:
            differing = first_differing_node(model, inputs[0]) or "no single node output differs by more than 0.1 %"
        except OpenCVLoadError as err:
            differing = f"not located (OpenCV: {err})"
    return OpenCVComparison(agreement, max_diff, differing)


def first_differing_node(model: onnx.ModelProto, x: np.ndarray, rtol: float = 1e-3) -> str | None:
    """The output name of the first node (in graph order) whose float output differs between
    OpenCV DNN and ONNX Runtime by more than ``rtol`` of its largest magnitude (or differs in
    shape), or None when every exposed output agrees."""
    probe = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in [*probe.graph.value_info, *probe.graph.output]}
    names = []
    for node in probe.graph.node:
        info = infos.get(node.output[0]) if node.output else None
        # OpenCV needs a shape on every graph output; constants are not computed by either engine
        if (node.op_type != "Constant" and info is not None and info.type.tensor_type.HasField("shape")
                and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT):
            names.append(node.output[0])
    del probe.graph.output[:]
    probe.graph.output.extend(infos[name] for name in names)
    data = probe.SerializeToString()
    net = _read_net(data)
    computed = set(net.getLayerNames())  # OpenCV folds some nodes away at import
    names = [name for name in names if name in computed]
    ours = _plain_session(data).run(names, {"image": x})
    theirs = _forward(net, x, names)
    for name, a, b in zip(names, ours, theirs):
        if a.shape != b.shape or np.abs(a - b).max() > rtol * max(1.0, float(np.abs(a).max())):
            return name
    return None


def _read_net(data: bytes):
    import cv2

    try:
        return cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8))
    except cv2.error as err:
        raise OpenCVLoadError(_one_line(err)) from None


def _forward(net, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    import cv2

    try:
        net.setInput(x)
        outputs = net.forward(names)
    except cv2.error as err:
        raise OpenCVLoadError(_one_line(err)) from None
    return [np.asarray(out) for out in outputs]


def _plain_session(data: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _one_line(err: Exception) -> str:
    """OpenCV's message (a summary line, then the failing node's details) as one line,
    without the version and source-file prefixes."""
    text = " ".join(line.strip(" >") for line in str(err).splitlines() if line.strip(" >"))
    return re.sub(r"OpenCV\([^)]*\) \S+:\d+: error: ", "", text) or "unknown error"
