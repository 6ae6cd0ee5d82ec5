"""edanet: Efficient Dense modules of Asymmetric convolution (Lo et al., 2019), a real-time
net that trains from scratch (0.68 M parameters; 66.4 mIoU on CamVid test).

Unlike depth-wise designs (DABNet, CGNet) every conv is a full convolution, which is what a
CPU trains fastest per FLOP. Layout: ENet downsampling 3 -> 15 -> 60; five EDA modules
(dilations 1, 1, 1, 2, 2) growing the features densely by 40 channels each (-> 260);
downsampling to 130; eight EDA modules (dilations 2, 2, 4, 4, 8, 8, 16, 16; -> 450); a 1x1
classifier and x8 bilinear upsampling. An EDA module: 1x1 conv to the growth rate, a 3x1 +
1x3 pair, a dilated 3x1 + 1x3 pair, dropout, and concatenation with its input.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.blocks import Concat, ConvBNAct, PoolConcatDownsample, SegmentationModel, Upsample
from edgeseg.models.registry import register_model


class EDAModule(nn.Module):
    def __init__(self, in_channels: int, growth: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.reduce = ConvBNAct(in_channels, growth, 1)
        self.local = nn.Sequential(ConvBNAct(growth, growth, (3, 1), bn=False, act="none"),
                                   ConvBNAct(growth, growth, (1, 3)))
        self.context = nn.Sequential(ConvBNAct(growth, growth, (3, 1), dilation=dilation, bn=False, act="none"),
                                     ConvBNAct(growth, growth, (1, 3), dilation=dilation))
        self.dropout = nn.Dropout2d(dropout)
        self.concat = Concat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concat(self.dropout(self.context(self.local(self.reduce(x)))), x)


def dense_stage(in_channels: int, growth: int, dilations: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    modules = []
    for dilation in dilations:
        modules.append(EDAModule(in_channels, growth, dilation, dropout))
        in_channels += growth
    return nn.Sequential(*modules), in_channels


class EDANet(SegmentationModel):
    output_stride = 8

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.02) -> None:
        super().__init__()
        c1, c2, c3, growth = (max(4, int(round(c * width))) for c in (15, 60, 130, 40))
        self.down1 = PoolConcatDownsample(3, c1)
        self.down2 = PoolConcatDownsample(c1, c2)
        self.stage1, wide1 = dense_stage(c2, growth, [1, 1, 1, 2, 2], dropout)
        self.down3 = PoolConcatDownsample(wide1, c3)
        self.stage2, wide2 = dense_stage(c3, growth, [2, 2, 4, 4, 8, 8, 16, 16], dropout)
        self.classifier = ConvBNAct(wide2, num_classes, 1, bn=False, act="none")
        self.upsample = Upsample(8, logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.down2(self.down1(x)))
        x = self.stage2(self.down3(x))
        return self.upsample(self.classifier(x))


@register_model
def edanet(num_classes: int, width: float = 1.0, dropout: float = 0.02) -> EDANet:
    """EDANet (about 0.68 M parameters at width 1): dense asymmetric full convs, CPU-friendly."""
    return EDANet(num_classes, width, dropout)
