"""dabnet: Depth-wise Asymmetric Bottleneck network (Li et al., BMVC 2019), a real-time
net that trains well from scratch (0.76 M parameters; 66.4 mIoU on CamVid test).

Layout: three 3x3 convs (the first with stride 2), then the image downsampled to 1/2, 1/4
and 1/8 is concatenated back in at each stage ("input injection"); 3 DAB modules at 1/4
(dilation 2) and 6 at 1/8 (dilations 4, 4, 8, 8, 16, 16); a 1x1 classifier on the
concatenation of the stage outputs, upsampled x8.

A DAB module: 3x3 conv halving the channels; two depth-wise branches, 3x1 then 1x3, one
plain and one dilated; their sum; a 1x1 conv back to full width; a residual add. Written
with ConvBNAct (conv -> BN -> PReLU) throughout, so the original's pre-activation BN on
the module input becomes the post-activation of the previous block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.models.blocks import Add, Concat, ConvBNAct, PoolConcatDownsample, SegmentationModel, Upsample
from edgeseg.models.registry import register_model


class DABModule(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        half = channels // 2
        self.reduce = ConvBNAct(channels, half, 3, act="prelu")
        self.local = nn.Sequential(ConvBNAct(half, half, (3, 1), groups=half, act="prelu"),
                                   ConvBNAct(half, half, (1, 3), groups=half, act="prelu"))
        self.context = nn.Sequential(ConvBNAct(half, half, (3, 1), dilation=dilation, groups=half, act="prelu"),
                                     ConvBNAct(half, half, (1, 3), dilation=dilation, groups=half, act="prelu"))
        self.merge = Add()
        self.expand = ConvBNAct(half, channels, 1, act="none")
        self.residual = Add()
        self.out_act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        y = self.expand(self.merge(self.local(y), self.context(y)))
        return self.out_act(self.residual(y, x))


class DABNet(SegmentationModel):
    output_stride = 8

    def __init__(self, num_classes: int, width: float = 1.0, blocks: tuple[int, int] = (3, 6)) -> None:
        super().__init__()
        c1, c2, c3 = (max(8, int(round(c * width / 2)) * 2) for c in (32, 64, 128))
        self.stem = nn.Sequential(ConvBNAct(3, c1, 3, stride=2, act="prelu"), ConvBNAct(c1, c1, act="prelu"),
                                  ConvBNAct(c1, c1, act="prelu"))
        self.inject = Concat()
        self.bn_prelu1 = nn.Sequential(nn.BatchNorm2d(c1 + 3), nn.PReLU(c1 + 3))
        self.down2 = PoolConcatDownsample(c1 + 3, c2, act="prelu")
        self.stage2 = nn.Sequential(*(DABModule(c2, 2) for _ in range(blocks[0])))
        self.bn_prelu2 = nn.Sequential(nn.BatchNorm2d(2 * c2 + 3), nn.PReLU(2 * c2 + 3))
        self.down3 = PoolConcatDownsample(2 * c2 + 3, c3, act="prelu")
        dilations = [4, 4, 8, 8, 16, 16][: blocks[1]] + [16] * max(0, blocks[1] - 6)
        self.stage3 = nn.Sequential(*(DABModule(c3, d) for d in dilations))
        self.bn_prelu3 = nn.Sequential(nn.BatchNorm2d(2 * c3 + 3), nn.PReLU(2 * c3 + 3))
        self.classifier = ConvBNAct(2 * c3 + 3, num_classes, 1, bn=False, act="none")
        self.upsample = Upsample(8, logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x2 = F.avg_pool2d(x, 2)
        x4 = F.avg_pool2d(x2, 2)
        x8 = F.avg_pool2d(x4, 2)
        s1 = self.bn_prelu1(self.inject(self.stem(x), x2))
        d2 = self.down2(s1)
        s2 = self.bn_prelu2(self.inject(self.stage2(d2), d2, x4))
        d3 = self.down3(s2)
        s3 = self.bn_prelu3(self.inject(self.stage3(d3), d3, x8))
        return self.upsample(self.classifier(s3))


@register_model
def dabnet(num_classes: int, width: float = 1.0, blocks: tuple[int, int] = (3, 6)) -> DABNet:
    """DABNet (about 0.75 M parameters at width 1): real-time, trains well from scratch."""
    return DABNet(num_classes, width, tuple(blocks))
