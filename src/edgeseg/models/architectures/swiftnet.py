"""swiftnet: SwiftNet-style real-time segmentation (Orsic et al., CVPR 2019) sized for CPUs.

A ResNet-18-style encoder (a stride-4 stem, then four stages of two basic residual blocks
at strides 4, 8, 16, 32), spatial pyramid pooling on the stride-32 features for global
context, and a ladder decoder: upsample x2, add a 1x1 lateral projection of the encoder
stage, blend with one 3x3 conv, down to stride 4; a classifier and x4 bilinear upsampling.
Only dense 3x3 convs do the work, which train 6-8x faster per MAC on a CPU than the
depth-wise or asymmetric convs of DABNet and EDANet (measured, see README). ``width``
scales the encoder (1.0 = ResNet-18's 64-128-256-512), ``decoder`` sets the ladder width.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.architectures.resnet import BasicBlock
from edgeseg.models.blocks import AdaptiveAvgPool, Add, Concat, ConvBNAct, SegmentationModel, Upsample
from edgeseg.models.registry import register_model


class PyramidPooling(nn.Module):
    """Average-pool to each grid size, project, upsample back and concatenate (PSP/SwiftNet SPP)."""

    def __init__(self, in_channels: int, out_channels: int, grids: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        branch = max(8, in_channels // 4)
        self.pools = nn.ModuleList(AdaptiveAvgPool(grid) for grid in grids)
        self.reduce = ConvBNAct(in_channels, branch, 1)
        self.branches = nn.ModuleList(ConvBNAct(branch, branch // 2, 1) for _ in grids)
        self.upsample = Upsample()
        self.concat = Concat()
        self.fuse = ConvBNAct(branch + len(grids) * (branch // 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        pooled = [self.upsample(conv(pool(x)), x) for pool, conv in zip(self.pools, self.branches)]
        return self.fuse(self.concat(x, *pooled))


class LadderStep(nn.Module):
    """Upsample the coarser features, add the lateral projection of the skip, blend."""

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.lateral = ConvBNAct(skip_channels, channels, 1)
        self.upsample = Upsample()
        self.add = Add()
        self.blend = ConvBNAct(channels, channels, 3)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blend(self.add(self.upsample(coarse, skip), self.lateral(skip)))


class SwiftNet(SegmentationModel):
    output_stride = 32
    checkpoint_modules = ("stem", "stage1", "stage2", "stage3", "stage4", "context", "up16", "up8", "up4")

    def __init__(self, num_classes: int, width: float = 0.5, decoder: int = 64) -> None:
        super().__init__()
        c = [max(8, int(round(ch * width / 8)) * 8) for ch in (64, 128, 256, 512)]
        self.stem = nn.Sequential(ConvBNAct(3, c[0] // 2, 3, stride=2), ConvBNAct(c[0] // 2, c[0], 3, stride=2))
        self.stage1 = nn.Sequential(BasicBlock(c[0], c[0]), BasicBlock(c[0], c[0]))
        self.stage2 = nn.Sequential(BasicBlock(c[0], c[1], 2), BasicBlock(c[1], c[1]))
        self.stage3 = nn.Sequential(BasicBlock(c[1], c[2], 2), BasicBlock(c[2], c[2]))
        self.stage4 = nn.Sequential(BasicBlock(c[2], c[3], 2), BasicBlock(c[3], c[3]))
        self.context = PyramidPooling(c[3], decoder)
        self.up16 = LadderStep(c[2], decoder)
        self.up8 = LadderStep(c[1], decoder)
        self.up4 = LadderStep(c[0], decoder)
        self.classifier = ConvBNAct(decoder, num_classes, 1, bn=False, act="none")
        self.upsample = Upsample(4, logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s4 = self.stage1(self.stem(x))
        s8 = self.stage2(s4)
        s16 = self.stage3(s8)
        s32 = self.stage4(s16)
        y = self.up4(self.up8(self.up16(self.context(s32), s16), s8), s4)
        return self.upsample(self.classifier(y))


@register_model
def swiftnet(num_classes: int, width: float = 0.5, decoder: int = 64) -> SwiftNet:
    """SwiftNet-style: ResNet-18-like encoder (``width`` x 64-512), SPP context, ladder decoder."""
    return SwiftNet(num_classes, width, decoder)
