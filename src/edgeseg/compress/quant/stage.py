"""The quantize stage's first half, post-training quantization: model directory in, quantized
model directory out (BN folded, quantizers attached and calibrated, weights on their grid).
Quantization-aware fine-tuning is a training run that starts from that directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgeseg.compress.bn_fold import fold_batchnorm
from edgeseg.compress.quant.bias_correction import correct_biases, input_channel_means
from edgeseg.compress.quant.graph import bake_weights, calibrate, low_bit_layout, quantization_points
from edgeseg.compress.quant.snapshot import quantization_snapshot, snapshot_text
from edgeseg.errors import ModelError
from edgeseg.models.blocks import ConvBNAct
from edgeseg.models.model_dir import drop_auxiliary_heads, load_model_dir, save_model_dir
from edgeseg.models.quant_spec import QuantizationRecord, QuantizeConfig
from edgeseg.models.quantized import attach_quantizers
from edgeseg.models.profile import trainable_convs
from edgeseg.models.stride import pad_to_stride, round_up

SNAPSHOT_TEXT = "snapshot_log.txt"
SNAPSHOT_JSON = "snapshot_log.json"


def quantize_model_dir(source: str | Path, out: str | Path, config: QuantizeConfig,
                       calibration_images: list[torch.Tensor]) -> dict:
    """Post-training quantization of a model directory.

    BatchNorms are folded first when they are not yet (exact, see bn_fold); activation
    ranges are calibrated on ``calibration_images`` (normalised CHW tensors, at most
    ``config.calibration_batches`` of them); weights are stored quantized, so every weight
    that was zero is still zero, and (``bias_correction``) each conv's bias absorbs the mean
    shift of its output that the weight rounding causes. ``out`` gets snapshot_log.txt/.json
    (per-tensor grids and the per-conv shift check). Returns the stage metrics.
    """
    loaded = load_model_dir(source)
    if loaded.config.quantization is not None:
        raise ModelError(f"{source}: this model is already quantized")
    model, stride = loaded.model, loaded.config.output_stride
    base_config = drop_auxiliary_heads(model, loaded.config)  # they would never see a calibration image
    low_bit = config.scheme == "low-bit"
    if low_bit and loaded.config.batchnorm_folded:
        raise ModelError(f"{source}: its BatchNorms are folded; the low-bit scheme binarizes the weights before "
                         f"the BatchNorm (one scale per tensor), so quantize the model from before fold-bn")
    folded = None if loaded.config.batchnorm_folded or low_bit else fold_batchnorm(model).folded_into_conv
    zero_masks = {name: conv.weight == 0 for name, conv in trainable_convs(model)}
    size = round_up(loaded.config.input_size, stride)
    if low_bit:
        points, follow, float_layers = low_bit_layout(model, size)
    else:
        points, follow, first_layers = quantization_points(model, size)
        float_layers = [] if config.quantize_first_layer else first_layers
    images = [pad_to_stride(image, stride)[None] for image in calibration_images[:config.calibration_batches]]
    correct = config.bias_correction and not low_bit
    input_means = input_channel_means(model, images) if correct else {}
    float_weights = {name: block.conv.weight.detach().clone() for name, block in model.named_modules()
                     if correct and isinstance(block, ConvBNAct)}
    attach_quantizers(model, config, points, follow, float_layers)
    seen = calibrate(model, images)
    if not low_bit:  # binary weights keep their float latents for fine-tuning; export binarizes them
        bake_weights(model)
    biases_corrected = correct_biases(model, float_weights, input_means) if correct else 0
    revived = sum(int((conv.weight[zero_masks[name]] != 0).sum()) for name, conv in trainable_convs(model))
    snapshot = quantization_snapshot(model, images[0])
    metrics = {"stage": "quantize", "scheme": config.scheme, "weight_bits": config.weight_bits,
               "activation_bits": config.activation_bits, "target": config.target,
               "calibration_images": seen, "quantized_tensors": len(points) + (0 if float_layers else 1),
               "float_layers": float_layers, "biases_corrected": biases_corrected,
               "batchnorms_folded_here": folded,
               "zeros_before": sum(int(mask.sum()) for mask in zero_masks.values()),
               "zeros_after": sum(int((conv.weight == 0).sum()) for _, conv in trainable_convs(model)),
               "zeros_revived": revived,
               "shift_violations": sum(row["shift_ok"] is False for row in snapshot["convs"])}
    record = QuantizationRecord(spec=config, points=points, follow=follow, float_layers=float_layers)
    model_config = base_config.with_stage(metrics, quantization=record.model_dump(mode="json"),
                                            batchnorm_folded=loaded.config.batchnorm_folded or not low_bit)
    save_model_dir(model, model_config, out, extra_files={
        SNAPSHOT_TEXT: snapshot_text(snapshot), SNAPSHOT_JSON: json.dumps(snapshot, indent=1) + "\n"})
    return metrics
