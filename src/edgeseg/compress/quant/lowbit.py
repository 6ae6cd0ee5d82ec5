"""Blueoil's low-bit scheme in deployable form ("convert"): binary weights with the
BatchNorm folded in, which an int8 engine runs exactly.

Training keeps float latent weights W and a BatchNorm after each binary conv:
y = s_o (alpha sign(W) * x)_o + t_o with alpha = mean|W|. Folding gives, per output channel,
W'_o = s_o alpha sign(W_o): still one magnitude per channel, stored exactly as the int8
levels +-127 on the per-channel scale |s_o| alpha / 127. Using 127 levels rather than +-1
costs nothing (the 2-bit activations are 0..3, so no u8 x s8 pair sum comes near
saturation) and makes the int32 bias grid s_in x s_w 127x finer: with levels +-1 its
rounding moved outputs by up to 1/30 of an activation step and flipped 2 % of them.
The 2-bit activations are already integers 0..3 on the scale activation_max / 3.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.compress.bn_fold import fold_batchnorm
from edgeseg.compress.quant.graph import probe
from edgeseg.models.blocks import ConvBNAct
from edgeseg.models.quant_spec import QuantizationRecord, QuantizeConfig
from edgeseg.models.quantizers import ActivationQuantizer, WeightQuantizer, binary_weight

PER_CHANNEL_BINARY = QuantizeConfig(scheme="float", weight_bits=8, target="full-range")  # two levels, +-127


def is_low_bit(quantization: QuantizationRecord | None) -> bool:
    """Whether a model directory's quantization record is the low-bit scheme."""
    return quantization is not None and quantization.spec.scheme == "low-bit"


@torch.no_grad()
def fold_low_bit(model: nn.Module, input_size: tuple[int, int]) -> int:
    """In place: binarize every low-bit conv's weights, fold all BatchNorms, give those convs
    per-channel weight quantizers (levels +-127, which reproduce the folded weights exactly)
    and round the biases of those reading a quantized tensor to the int32 grid
    s_in x s_w the integer engine adds them on. The model then computes what the engine
    computes; without the bias rounding, outputs within 1/250 of an activation step of a
    rounding boundary would go different ways in the two. Returns the number of binary convs."""
    binary = {block: None for block in model.modules() if isinstance(block, ConvBNAct)
              and block.weight_quantizer is not None and block.weight_quantizer.scheme == "low-bit"}
    for block in binary:
        block.conv.weight.copy_(binary_weight(block.conv.weight))
    fold_batchnorm(model)
    for block in binary:
        block.weight_quantizer = WeightQuantizer(PER_CHANNEL_BINARY)
    for block, input_scale in _input_scales(model, list(binary), input_size).items():
        if input_scale is not None:
            scale = (input_scale * block.weight_quantizer.scales(block.conv.weight).double()).float()
            block.conv.bias.copy_(torch.round(block.conv.bias.double() / scale.double()).float() * scale)
    return len(binary)


def _input_scales(model: nn.Module, blocks: list[ConvBNAct], input_size) -> dict[ConvBNAct, float | None]:
    """The grid step of the quantized tensor each block reads (None: a float input)."""
    made: dict[int, float] = {}
    keep: list[torch.Tensor] = []  # holds the tensors so their ids stay unique during the run
    seen: dict[ConvBNAct, float | None] = {}

    def record(quantizer, inputs, output):
        made[id(output)] = quantizer.grid().scale
        keep.append(output)

    handles = [module.register_forward_hook(record) for module in model.modules()
               if isinstance(module, ActivationQuantizer)]
    handles += [block.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, made.get(id(args[0]))))
                for block in blocks]
    probe(model, handles, input_size)
    return seen
