"""``edgeseg export --format onnx|onnx-int8``: a model directory to an ONNX file that checks
itself against its source on real images before it is written.

fp32: the float model; the check is the largest absolute logit difference.
int8: a quantized model directory (``edgeseg quantize``) in QDQ form: int8 weights,
int32 biases and QuantizeLinear/DequantizeLinear pairs on every quantized activation, which
ONNX Runtime's graph optimisations turn into integer kernels. The check runs the file in
ONNX Runtime with all optimisations and compares its predictions with the PyTorch
fake-quantized model it came from (argmax agreement, and mIoU when labels are given), so an
engine that computes differently from the simulation (an x86 CPU without VNNI saturating
full-range weights) fails the export instead of shipping.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from edgeseg.compress.quant.graph import bake_weights
from edgeseg.compress.quant.lowbit import fold_low_bit, is_low_bit
from edgeseg.compress.quant.stage import pad_to_stride
from edgeseg.errors import EdgesegError, ModelError
from edgeseg.export.onnx_graph import (clip_activation_levels, fold_weight_quantization, quantize_conv_biases,
                                      set_metadata)
from edgeseg.fileio import atomic_write_bytes
from edgeseg.inference import TorchPredictor
from edgeseg.metrics import ConfusionMatrix, class_ids
from edgeseg.models.model_dir import load_model_dir

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


def export_onnx(model_dir: str | Path, out: str | Path, int8: bool, size: tuple[int, int] | None,
                check_images: list[tuple[torch.Tensor, torch.Tensor | None]],
                tolerances: Tolerances = Tolerances()) -> dict:
    """Export, check, and only then write ``out`` (atomically). Returns the export metrics.

    ``size``: the fixed (H, W) input of the file, padded up to the output stride (default:
    the model's input size). ``check_images``: (normalised CHW image, HW labels or None)
    pairs, each no larger than the export size. Raises ExportCheckError beyond tolerance.
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
    proto = _to_onnx(copy.deepcopy(model), size)
    if int8:
        graph_changes.update(weights_int8=fold_weight_quantization(proto), biases_int32=quantize_conv_biases(proto))
    if low_bit:
        bits = config.quantization["spec"]["activation_bits"]
        graph_changes["activations_clipped"] = clip_activation_levels(proto, 2 ** bits - 1)
    set_metadata(proto, _metadata(config, int8, size))
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    from edgeseg.inference import OnnxPredictor

    exported = OnnxPredictor.from_bytes(data)
    check = _compare(reference, exported, check_images, int8)
    if check["non_finite_logits"]:  # NaN compares as no difference: refuse it before any tolerance
        raise ExportCheckError(f"{out}: not written: {check['non_finite_logits']} logits are NaN or infinite on "
                               f"{check['check_images']} check images (the model's weights or inputs are not finite)")
    metrics = {"format": "onnx-int8" if int8 else "onnx", "opset": OPSET, "size": list(size), **graph_changes, **check}
    if int8:
        relative = check["max_abs_diff"] / max(check["max_abs_logit"], 1e-12)
        metrics["relative_diff"] = relative
        # with 2-bit activations one level flipped at a rounding tie (the engine's requantization
        # vs float) moves nearby logits by a large fraction of their range: argmax and mIoU decide
        logits_checked = not low_bit
        if (check["agreement"] < tolerances.min_agreement or check.get("miou_drop", 0.0) > tolerances.max_miou_drop
                or (logits_checked and relative > tolerances.max_relative_diff)):
            raise ExportCheckError(
                f"{out}: not written: ONNX Runtime's int8 model disagrees with the quantized PyTorch model "
                f"(pixel agreement {100 * check['agreement']:.2f} %, mIoU drop {100 * check.get('miou_drop', 0):.2f} "
                f"points, logits off by up to {100 * relative:.1f} % of their range on {check['check_images']} "
                f"images; tolerances {100 * tolerances.min_agreement:.1f} % / {100 * tolerances.max_miou_drop:.1f} / "
                f"{100 * tolerances.max_relative_diff:.0f} %); on x86 without VNNI full-range 8-bit weights "
                f"saturate: quantize with target x86")
    elif check["max_abs_diff"] > tolerances.max_abs_diff * max(1.0, check["max_abs_logit"]):
        raise ExportCheckError(f"{out}: not written: ONNX logits differ from PyTorch by up to "
                               f"{check['max_abs_diff']:.3g} on {check['check_images']} images")
    atomic_write_bytes(out, data)
    return metrics


def _to_onnx(model: torch.nn.Module, size: tuple[int, int]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, *size),), buffer, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    return proto


def _metadata(config, int8: bool, size: tuple[int, int]) -> dict:
    return {"edgeseg_config": config.model_dump(mode="json"), "classes": config.classes, "palette": config.palette,
            "mean": config.mean, "std": config.std, "input_size": list(size), "ignore_index": config.ignore_index,
            "label_palette": config.class_info().flat_palette(),
            "precision": "int8" if int8 else "fp32", "quantization": config.quantization,
            "edgeseg_version": config.edgeseg_version}


def _compare(reference: TorchPredictor, exported, images, int8: bool) -> dict:
    """Run both on every image; logit differences, argmax agreement, mIoU of each."""
    num_classes = reference.classes.num_classes
    ignore = reference.classes.ignore_index
    confusions = {"reference": ConfusionMatrix(num_classes, ignore), "exported": ConfusionMatrix(num_classes, ignore)}
    same = total = non_finite = 0
    max_diff = max_logit = 0.0
    labelled = all(labels is not None for _, labels in images)
    for image, labels in images:
        a = reference.logits(image[None])
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
