"""The structure of a BN-folded model: convs with biases and no BatchNorm layers.

A BatchNorm inside a ``ConvBNAct`` goes into its conv (which gets a bias); a BatchNorm with
no conv directly before it (after a concat with pooled channels, as in ENet-style
downsampling) becomes a ``ChannelAffine``. ``strip_batchnorm`` makes that change without
weights, so a folded model directory rebuilds by creating the architecture, stripping, then
loading; the weight arithmetic lives in ``edgeseg.compress.bn_fold``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgeseg.models.blocks import ConvBNAct


class ChannelAffine(nn.Module):
    """y = x * scale[c] + shift[c] (caffe's Scale layer with bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def give_bias(conv: nn.Conv2d) -> None:
    """Give ``conv`` a zero bias if it has none."""
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))


def block_batchnorms(model: nn.Module) -> list[ConvBNAct]:
    """The ConvBNAct blocks that still have a BatchNorm."""
    return [block for block in model.modules() if isinstance(block, ConvBNAct) and isinstance(block.bn, nn.BatchNorm2d)]


def replace_free_batchnorms(model: nn.Module, to_affine: Callable[[nn.BatchNorm2d], ChannelAffine]) -> int:
    """Replace every BatchNorm2d left in ``model`` by ``to_affine(bn)``; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, to_affine(child))
                count += 1
    return count


def _placeholder_affine(bn: nn.BatchNorm2d) -> ChannelAffine:
    device = bn.running_mean.device if bn.running_mean is not None else "cpu"
    return ChannelAffine(bn.num_features).to(device)


def strip_batchnorm(model: nn.Module) -> nn.Module:
    """The folded architecture with placeholder values, ready for a strict weight load."""
    for block in block_batchnorms(model):
        give_bias(block.conv)
        block.bn = nn.Identity()
    replace_free_batchnorms(model, _placeholder_affine)
    return model
