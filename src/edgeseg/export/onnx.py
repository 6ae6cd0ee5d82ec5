"""``edgeseg export --format onnx|onnx-int8``: a model directory to an ONNX file that checks
itself against its source on real images before it is written.

fp32: the float model; the check is the largest absolute logit difference, and a file of
fixed size must also load in OpenCV DNN and give ONNX Runtime's classes there, so that it is
portable beyond ONNX Runtime. ``dynamic`` (fp32 or int8): free height and width (multiples
of the output stride), checked in ONNX Runtime at two sizes.
int8: a quantized model directory (``edgeseg quantize``) in QDQ form: int8 weights,
int32 biases and QuantizeLinear/DequantizeLinear pairs on every quantized activation, which
ONNX Runtime's graph optimisations turn into integer kernels. The check runs the file in
ONNX Runtime with all optimisations and compares its predictions with the PyTorch
fake-quantized model it came from (argmax agreement, and mIoU when labels are given), so an
engine that computes differently from the simulation (an x86 CPU without VNNI saturating
full-range weights) fails the export instead of shipping.
Every graph goes through onnxscript's optimizer (constants folded, dead nodes removed;
QuantizeLinear/DequantizeLinear are never folded) before it is checked and written.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeseg.compress.quant.graph import bake_weights
from edgeseg.compress.quant.lowbit import fold_low_bit, is_low_bit
from edgeseg.errors import EdgesegError, ModelError
from edgeseg.export.onnx_graph import (clip_activation_levels, fold_weight_quantization, optimize_graph,
                                      quantize_conv_biases, without_local_paths)
from edgeseg.export.opencv_check import OpenCVLoadError, compare_with_opencv
from edgeseg.fileio import atomic_write_bytes
from edgeseg.predict.predictors import TorchPredictor, ort_session
from edgeseg.metrics import ConfusionMatrix, class_ids
from edgeseg.models.blocks import AdaptiveAvgPool
from edgeseg.models.model_dir import load_model_dir
from edgeseg.models.stride import pad_to_stride
from edgeseg.predict.metadata import set_metadata

OPSET = 17
ONNX_IR_VERSION = 9  # readable by every ONNX Runtime since 1.15


class ExportCheckError(EdgesegError):
    """The exported model does not compute what its source computes."""


@dataclass(frozen=True)
class Tolerances:
    max_abs_diff: float = 1e-3  # fp32, relative to max(1, largest |logit|)
    min_agreement: float = 0.98  # int8: fraction of pixels with the same class as the fake-quant model
    max_miou_drop: float = 0.01  # int8: mIoU (fraction) on the check images may not fall by more
    max_relative_diff: float = 0.1  # int8: largest |logit difference| / largest |logit|
    min_opencv_agreement: float = 0.999  # fp32: fraction of pixels where OpenCV DNN's class is ONNX Runtime's


def export_onnx(model_dir: str | Path, out: str | Path, int8: bool, size: tuple[int, int] | None,
                check_images: list[tuple[torch.Tensor, torch.Tensor | None]],
                tolerances: Tolerances = Tolerances(), dynamic: bool = False) -> dict:
    """Export, optimise, check, and only then write ``out`` (atomically). Returns the export
    metrics (including the node count before and after the optimizer).

    ``size``: the fixed (H, W) input of the file, padded up to the output stride (default:
    the model's input size); with ``dynamic`` it is just the traced size and the file takes
    any multiple of the output stride. ``check_images``: (normalised CHW image,
    HW labels or None) pairs, each no larger than a fixed export size. Raises
    ExportCheckError beyond tolerance, or when OpenCV DNN cannot read a fixed-size fp32 file.
    """
    loaded = load_model_dir(model_dir)
    config = loaded.config
    if int8 and config.quantization is None:
        raise ModelError(f"{model_dir}: not a quantized model; run 'edgeseg quantize' first (or export --format onnx)")
    if not int8 and config.quantization is not None:
        raise ModelError(f"{model_dir}: a quantized model exports with --format onnx-int8")
    if not check_images:
        raise EdgesegError("export checks itself on real images: none were given")
    stride = config.output_stride
    size = tuple(pad_to_stride(torch.zeros(1, *(size or config.input_size)), stride).shape[-2:])
    model = loaded.model.eval()
    low_bit = is_low_bit(config.quantization)
    reference = TorchPredictor(copy.deepcopy(model) if low_bit else model, config, torch.device("cpu"))
    graph_changes = {}
    if low_bit:
        graph_changes["binary_convs_folded"] = fold_low_bit(model, size)
    if int8:
        bake_weights(model)
    proto = to_onnx(copy.deepcopy(model), size, dynamic)
    if int8:
        graph_changes.update(weights_int8=fold_weight_quantization(proto), biases_int32=quantize_conv_biases(proto))
    if low_bit:
        bits = config.quantization.spec.activation_bits
        graph_changes["activations_clipped"] = clip_activation_levels(proto, 2 ** bits - 1)
    nodes_exported = len(proto.graph.node)
    proto = optimize_graph(proto)
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    set_metadata(proto, _metadata(config, int8, None if dynamic else size))
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    from edgeseg.predict.predictors import OnnxPredictor

    exported = OnnxPredictor.from_bytes(data)
    check = _compare(reference, exported, check_images, int8)
    if check["non_finite_logits"]:  # NaN compares as no difference: refuse it before any tolerance
        raise ExportCheckError(f"{out}: not written: {check['non_finite_logits']} logits are NaN or infinite on "
                               f"{check['check_images']} check images (the model's weights or inputs are not finite)")
    metrics = {"format": "onnx-int8" if int8 else "onnx", "opset": OPSET, "size": list(size), "dynamic": dynamic,
               "nodes_exported": nodes_exported, "nodes": len(proto.graph.node), **graph_changes, **check}
    if dynamic:
        larger = _one_stride_larger(check_images[0], stride)
        other = _compare(reference, exported, [larger], int8)
        metrics["max_abs_diff"] = max(check["max_abs_diff"], other["max_abs_diff"])
        metrics["max_abs_logit"] = max(check["max_abs_logit"], other["max_abs_logit"])
        metrics["agreement"] = min(check["agreement"], other["agreement"])
        padded = {tuple(-(-d // stride) * stride for d in x.shape[-2:]) for x, _ in [*check_images, larger]}
        metrics["sizes_checked"] = sorted(list(hw) for hw in padded)
    if int8:
        relative = metrics["max_abs_diff"] / max(metrics["max_abs_logit"], 1e-12)
        metrics["relative_diff"] = relative
        # with 2-bit activations one level flipped at a rounding tie (the engine's requantization
        # vs float) moves nearby logits by a large fraction of their range: argmax and mIoU decide
        logits_checked = not low_bit
        if (metrics["agreement"] < tolerances.min_agreement or check.get("miou_drop", 0.0) > tolerances.max_miou_drop
                or (logits_checked and relative > tolerances.max_relative_diff)):
            raise ExportCheckError(
                f"{out}: not written: ONNX Runtime's int8 model disagrees with the quantized PyTorch model "
                f"(pixel agreement {100 * metrics['agreement']:.2f} %, mIoU drop {100 * check.get('miou_drop', 0):.2f} "
                f"points, logits off by up to {100 * relative:.1f} % of their range on {check['check_images']} "
                f"images; tolerances {100 * tolerances.min_agreement:.1f} % / {100 * tolerances.max_miou_drop:.1f} / "
                f"{100 * tolerances.max_relative_diff:.0f} %); on x86 without VNNI full-range 8-bit weights "
                f"saturate: quantize with target x86")
    elif metrics["max_abs_diff"] > tolerances.max_abs_diff * max(1.0, metrics["max_abs_logit"]):
        sizes = " (at two sizes)" if dynamic else ""
        raise ExportCheckError(f"{out}: not written: ONNX logits differ from PyTorch by up to "
                               f"{metrics['max_abs_diff']:.3g} on {check['check_images']} images{sizes}")
    # int8: OpenCV DNN runs quantized models through its own int8 layers, not QDQ graphs like
    # these. Dynamic: OpenCV 4's importer rejects Shape on free dimensions (four of the six
    # architectures do not load); such a file is checked in ONNX Runtime at two sizes instead.
    if not int8 and not dynamic:
        metrics.update(_check_in_opencv(proto, check_images, size, out, tolerances.min_opencv_agreement))
    atomic_write_bytes(out, data)
    return metrics


def to_onnx(model: torch.nn.Module, size: tuple[int, int], dynamic: bool = False) -> onnx.ModelProto:
    """The graph as torch's exporter traces it at (1, 3, *size) (batch always free; height and
    width too with ``dynamic``), before optimisation."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    pools = [module for module in model.modules() if isinstance(module, AdaptiveAvgPool)]
    buffer = io.BytesIO()
    try:
        for pool in pools:
            pool.dynamic_size = dynamic
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, *size),), buffer, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
    finally:
        for pool in pools:
            del pool.dynamic_size
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    return proto


def _one_stride_larger(image: tuple[torch.Tensor, torch.Tensor | None], stride: int):
    """A check image zero-padded (the mean colour) by one output stride at the bottom and
    right, so that a dynamic file also runs at a second size."""
    return torch.nn.functional.pad(image[0], (0, stride, 0, stride)), None


def _check_in_opencv(proto: onnx.ModelProto, images, size: tuple[int, int], out, min_agreement: float) -> dict:
    """OpenCV DNN vs ONNX Runtime on the check images, padded as OnnxPredictor pads them."""
    inputs, crops = [], []
    for image, _ in images:
        h, w = image.shape[-2:]
        padded = torch.nn.functional.pad(image.float(), (0, size[1] - w, 0, size[0] - h))
        inputs.append(padded[None].contiguous().numpy())
        crops.append((h, w))
    try:
        result = compare_with_opencv(proto, inputs, min_agreement, crops)
    except OpenCVLoadError as err:
        raise ExportCheckError(f"{out}: not written: OpenCV DNN cannot run it ({err})") from None
    if result.agreement < min_agreement:
        raise ExportCheckError(f"{out}: not written: OpenCV DNN's classes agree with ONNX Runtime's on only "
                               f"{100 * result.agreement:.2f} % of pixels (at least {100 * min_agreement:.1f} % "
                               f"required); first differing node output: {result.first_difference}")
    return {"opencv_agreement": result.agreement, "opencv_max_abs_diff": result.max_abs_diff}


def _metadata(config, int8: bool, size: tuple[int, int] | None) -> dict:
    """The facts of config.json (local paths reduced to their last component) and how to
    feed the file: colour order, scaling and padding. ``size`` None: dynamic height and width."""
    stride = config.output_stride
    mean, std = ", ".join(f"{m:g}" for m in config.mean), ", ".join(f"{s:g}" for s in config.std)
    target = f"{size[0]}x{size[1]}" if size else f"a multiple of the output stride {stride}"
    return {"edgeseg_config": without_local_paths(config.model_dump(mode="json")), "classes": config.classes,
            "palette": config.palette, "mean": config.mean, "std": config.std,
            "input_size": list(size) if size else "dynamic", "output_stride": stride,
            "ignore_index": config.ignore_index, "label_palette": config.class_info().flat_palette(),
            "precision": "int8" if int8 else "fp32", "quantization": config.quantization.model_dump(mode="json") if config.quantization else None,
            "input_layout": "NCHW float32", "colour_order": "RGB",
            "input_channels": config.input_channels + (" (luminance 0.299 R + 0.587 G + 0.114 B on all 3 channels, "
                                                       "PIL's convert('L'))" if config.input_channels == "gray" else ""),
            "scaling": f"pixel / 255, then (x - mean) / std per channel, mean ({mean}), std ({std})",
            "padding": f"zeros after scaling (the mean colour) at the bottom and right up to {target}; "
                       f"crop the logits back",
            "edgeseg_version": config.edgeseg_version}


def _compare(reference: TorchPredictor, exported, images, int8: bool) -> dict:
    """Run both on every image; logit differences, argmax agreement, mIoU of each."""
    num_classes = reference.classes.num_classes
    ignore = reference.classes.ignore_index
    confusions = {"reference": ConfusionMatrix(num_classes, ignore), "exported": ConfusionMatrix(num_classes, ignore)}
    same = total = non_finite = 0
    max_diff = max_logit = 0.0
    labelled = all(labels is not None for _, labels in images)
    fixed = getattr(exported, "size", None)
    for image, labels in images:
        h, w = image.shape[-2:]
        # the reference sees the padding a fixed-size file is fed (a model of output stride 1, such as
        # fcn_alexnet, is otherwise run unpadded, and its large receptive field sees the difference)
        padded = torch.nn.functional.pad(image, (0, fixed[1] - w, 0, fixed[0] - h)) if fixed else image
        a = reference.logits(padded[None])[..., :h, :w]
        b = exported.logits(image[None])
        non_finite += int((~torch.isfinite(a)).sum() + (~torch.isfinite(b)).sum())
        max_diff = max(max_diff, float((a - b).abs().max()))
        max_logit = max(max_logit, float(a.abs().max()))
        pa, pb = class_ids(a), class_ids(b)
        same += int((pa == pb).sum())
        total += pa.numel()
        if labelled:
            confusions["reference"].update(pa, labels[None])
            confusions["exported"].update(pb, labels[None])
    result = {"check_images": len(images), "max_abs_diff": max_diff, "max_abs_logit": max_logit,
              "agreement": same / total, "non_finite_logits": non_finite}
    if labelled:
        ref_miou = confusions["reference"].summary(reference.classes.names)["miou"]
        exp_miou = confusions["exported"].summary(reference.classes.names)["miou"]
        result.update(reference_miou=ref_miou, exported_miou=exp_miou, miou_drop=ref_miou - exp_miou)
    return result


def onnx_latency_ms(model: torch.nn.Module, size: tuple[int, int], runs: int = 20, warmup: int = 3) -> float:
    """The median fp32 ONNX Runtime latency of ``model`` on one (1, 3, *size) image, exported and
    optimised as ``edgeseg export`` does (nothing written)."""
    session = ort_session(optimize_graph(to_onnx(copy.deepcopy(model).eval().cpu(), size)).SerializeToString())
    image = np.zeros((1, 3, *size), dtype=np.float32)
    times = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        session.run(None, {"image": image})
        if index >= warmup:
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)
