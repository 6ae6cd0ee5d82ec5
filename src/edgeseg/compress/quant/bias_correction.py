"""Bias correction for quantized weights (Nagel et al. 2019, "Data-Free Quantization"; OpenVINO's
and AIMET's post-training "bias correction"): rounding a conv's weights shifts the mean of its
output by (W_q - W) E[x], and after a ReLU E[x] is positive, so the shift is systematic and
piles up layer by layer. With the per-channel mean of each conv's input measured on the
calibration images, the bias absorbs it: b' = b + sum_{i,k} (W - W_q)[o, i, k] E[x_i]
(exact away from the zero-padded borders)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from edgeseg.models.blocks import ConvBNAct


@torch.no_grad()
def input_channel_means(model: nn.Module, images: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean of every ConvBNAct's input per channel over ``images`` ((1, 3, H, W) batches),
    run in eval mode as the model is (call it before quantization is switched on)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args) -> None:
            x = args[0].detach().double()
            sums[name] = sums.get(name, 0) + x.sum(dim=(0, 2, 3))
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return hook

    handles = [module.register_forward_pre_hook(record(name))
               for name, module in model.named_modules() if isinstance(module, ConvBNAct)]
    was_training = model.training
    try:
        model.eval()
        for batch in images:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[name] / counts[name] for name in sums}


@torch.no_grad()
def correct_biases(model: nn.Module, float_weights: dict[str, torch.Tensor],
                   input_means: dict[str, torch.Tensor]) -> int:
    """Move each quantized conv's bias by (W - W_q) E[x], W from ``float_weights`` (block name
    -> the weight before quantization) and W_q its current, quantized weight. Returns the
    number of convs corrected (those with a bias, a weight quantizer and a measured input)."""
    corrected = 0
    for name, module in model.named_modules():
        if not (isinstance(module, ConvBNAct) and getattr(module, "weight_quantizer", None) is not None
                and module.conv.bias is not None and name in float_weights and name in input_means):
            continue
        conv = module.conv
        error = (float_weights[name].double() - conv.weight.double()).sum(dim=(2, 3))  # (O, I / groups)
        per_group = input_means[name].to(error.device).view(conv.groups, -1)
        means = per_group.repeat_interleave(conv.out_channels // conv.groups, dim=0)  # (O, I / groups)
        conv.bias.add_((error * means).sum(dim=1).to(conv.bias.dtype))
        corrected += 1
    return corrected
