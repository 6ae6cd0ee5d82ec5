"""The structure of a quantized model: quantizers attached where a ``QuantizationRecord``
says, so that a quantized model directory rebuilds without the compression passes.
Finding the points and calibrating them lives in ``edgeseg.compress.quant``."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from edgeseg.models.blocks import ConvBNAct
from edgeseg.models.quant_spec import INPUT, QuantizationRecord, QuantizeConfig
from edgeseg.models.quantizers import ActivationQuantizer, WeightQuantizer


def _quantize_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return module.output_quantizer(output)


def _quantize_input(module: nn.Module, args):
    return (module.input_quantizer(args[0]), *args[1:])


def attach_quantizers(model: nn.Module, config: QuantizeConfig, points: Iterable[str],
                      follow: dict[str, str] | None = None, float_layers: Iterable[str] = ()) -> nn.Module:
    """Give every ConvBNAct a weight quantizer, the model an input quantizer and each point an
    output quantizer (disabled until calibrated); points in ``follow`` use the grid of the
    point named there. ``float_layers`` (the first layers, when they stay in float as in
    Blueoil) keep float weights, and the input then stays float too. Returns the model,
    changed in place."""
    float_layers = set(float_layers)
    for name, module in model.named_modules():
        if isinstance(module, ConvBNAct):
            if not isinstance(module.bn, nn.Identity) and config.scheme != "low-bit":
                raise ValueError("fold the BatchNorms (edgeseg fold-bn) before quantizing: the quantized weights "
                                 "must be the ones an integer engine runs")
            if name not in float_layers:
                module.weight_quantizer = WeightQuantizer(config)
    modules = dict(model.named_modules())
    if not float_layers:
        model.input_quantizer = ActivationQuantizer(config)
        model.register_forward_pre_hook(_quantize_input)
    for name in points:
        if name not in modules:
            raise ValueError(f"quantization point '{name}' is not a module of this model")
        modules[name].output_quantizer = ActivationQuantizer(config)
        if config.scheme == "low-bit":  # a fixed range: nothing to calibrate
            modules[name].output_quantizer.enabled.fill_(1)
        modules[name].register_forward_hook(_quantize_output)
    for name, source in (follow or {}).items():
        owner = model if source == INPUT else modules.get(source)
        quantizer = getattr(owner, "input_quantizer" if source == INPUT else "output_quantizer", None)
        if name not in points or quantizer is None:
            raise ValueError(f"quantization point '{name}' follows '{source}', which is not quantized")
        modules[name].output_quantizer.follow(quantizer)
    return model


def attach_record(model: nn.Module, record: QuantizationRecord) -> nn.Module:
    """Attach the quantizers a model directory's config.json describes."""
    return attach_quantizers(model, record.spec, record.points, record.follow, record.float_layers)
