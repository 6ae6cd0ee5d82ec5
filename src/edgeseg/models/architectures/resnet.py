"""Backbones shared by several architectures, built from ConvBNAct only: ResNet basic and
bottleneck blocks (with dilation, for the output-stride-8 trunks of PSPNet and ICNet) and
MobileNetV2's inverted residual (ICNet's ``mobile_ops_only``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.models.blocks import Add, ConvBNAct


def scaled(channels: int, width: float) -> int:
    """``channels`` x ``width``, a multiple of 8 and at least 8."""
    return max(8, int(round(channels * width / 8)) * 8)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 ConvBNAct, a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, stride=stride, dilation=dilation)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, dilation=dilation, act="none")
        self.shortcut = (ConvBNAct(in_channels, out_channels, 1, stride=stride, act="none")
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.add = Add()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.add(self.conv2(self.conv1(x)), self.shortcut(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (strided, dilated), 1x1 expand to 4x the width."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBNAct(in_channels, width, 1)
        self.conv2 = ConvBNAct(width, width, 3, stride=stride, dilation=dilation)
        self.conv3 = ConvBNAct(width, out_channels, 1, act="none")
        self.shortcut = (ConvBNAct(in_channels, out_channels, 1, stride=stride, act="none")
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.add = Add()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.add(self.conv3(self.conv2(self.conv1(x))), self.shortcut(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand, 3x3 depth-wise (strided, dilated), linear 1x1 project; the
    input is added back when the shape allows."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 expand: int = 6) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBNAct(in_channels, hidden, 1, act="relu6")
        self.depthwise = ConvBNAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, act="relu6")
        self.project = ConvBNAct(hidden, out_channels, 1, act="none")
        self.residual = stride == 1 and in_channels == out_channels
        self.add = Add() if self.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return self.add(y, x) if self.add is not None else y


DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
          "mobile": (InvertedResidual, (2, 3, 4, 3))}


class DilatedBackbone(nn.Module):
    """PSPNet's trunk: a deep stem (three 3x3 convs, the first strided) and max pooling to
    stride 4, then four stages; the first two downsample (strides 4 and 8), the last two
    dilate by 2 and 4 instead, so the features stay at stride 8. ``depth`` 18, 34 or 50 gives
    ResNet blocks, "mobile" MobileNetV2 blocks; ``width`` scales every channel count."""

    def __init__(self, depth: int | str = 18, width: float = 1.0) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {', '.join(map(str, DEPTHS))}, not {depth!r}")
        block, counts = DEPTHS[depth]
        stem = scaled(64, width)
        self.stem = nn.Sequential(ConvBNAct(3, stem // 2, 3, stride=2), ConvBNAct(stem // 2, stem // 2, 3),
                                  ConvBNAct(stem // 2, stem, 3))
        widths = [scaled(c, width) for c in ((24, 32, 64, 96) if depth == "mobile" else (64, 128, 256, 512))]
        channels, stages = stem, []
        for index, (count, planes) in enumerate(zip(counts, widths)):
            stride, dilation = ((1, 1), (2, 1), (1, 2), (1, 4))[index]
            blocks = []
            for number in range(count):
                blocks.append(block(channels, planes, stride if number == 0 else 1, dilation))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = [widths[i] * block.expansion for i in range(4)]

    def early(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, pooling, stages 1 and 2: stride 8."""
        return self.layer2(self.layer1(F.max_pool2d(self.stem(x), 3, 2, 1)))

    def late(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stages 3 and 4 (dilated): (stage 3 output, stage 4 output)."""
        third = self.layer3(x)
        return third, self.layer4(third)
