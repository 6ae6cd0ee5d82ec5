"""jacintonet11_seg: TI's JacintoNet11 encoder with the "seg10" decoder (caffe-jacinto's
Cityscapes segmentation net), output stride 16.

Encoder: plain ConvBNAct stages, grouped 3x3 convs, a dilated last stage, no residual adds.
Decoder: a dilated head on the stride-16 features, x2 frozen bilinear deconvolution, sum
with a stride-8 head, four context convs (three dilated by 4), a classifier, and x8
upsampling by three frozen bilinear deconvolutions. ``width`` scales every channel count
(rounded to a multiple of the layer's groups). The deploy net's -128 input bias is replaced by
the model directory's mean/std normalisation, and the classifier is linear (logits).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.blocks import Add, ConvBNAct, FixedBilinearDeconv, SegmentationModel
from edgeseg.models.registry import register_model


def scaled(channels: int, width: float, groups: int = 4) -> int:
    return max(groups, int(round(channels * width / groups)) * groups)


class JacintoNet11Seg(SegmentationModel):
    output_stride = 16

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c = {n: scaled(n, width) for n in (32, 64, 128, 256, 512)}
        self.conv1 = nn.Sequential(ConvBNAct(3, c[32], 5, stride=2), ConvBNAct(c[32], c[32], groups=4))
        self.res2a = nn.Sequential(ConvBNAct(c[32], c[64], stride=2), ConvBNAct(c[64], c[64], groups=4))
        self.res3a = nn.Sequential(ConvBNAct(c[64], c[128], stride=2), ConvBNAct(c[128], c[128], groups=4))
        self.res4a = nn.Sequential(ConvBNAct(c[128], c[256], stride=2), ConvBNAct(c[256], c[256], groups=4))
        self.res5a = nn.Sequential(ConvBNAct(c[256], c[512]), ConvBNAct(c[512], c[512], dilation=2, groups=4))
        self.out5a = ConvBNAct(c[512], c[64], dilation=4, groups=2)
        self.out5a_up2 = FixedBilinearDeconv(c[64])
        self.out3a = ConvBNAct(c[128], c[64], groups=2)
        self.out_sum = Add()
        self.ctx = nn.Sequential(
            ConvBNAct(c[64], c[64]),
            ConvBNAct(c[64], c[64], dilation=4),
            ConvBNAct(c[64], c[64], dilation=4),
            ConvBNAct(c[64], c[64], dilation=4))
        self.ctx_final = ConvBNAct(c[64], num_classes, bn=False, act="none")
        self.up8 = nn.Sequential(*(FixedBilinearDeconv(num_classes) for _ in range(3)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        stride8 = self.res3a(self.res2a(self.conv1(x)))
        stride16 = self.res5a(self.res4a(stride8))
        merged = self.out_sum(self.out5a_up2(self.out5a(stride16)), self.out3a(stride8))
        return self.up8(self.ctx_final(self.ctx(merged)))


@register_model
def jacintonet11_seg(num_classes: int, width: float = 1.0) -> JacintoNet11Seg:
    """JacintoNet11 + seg10 decoder (REFERENCE.md section 1); width multiplier ``width``."""
    return JacintoNet11Seg(num_classes, width)
