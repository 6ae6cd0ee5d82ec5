"""basic_encdec: a small conv/BN/ReLU encoder-decoder with one skip, output stride 8.

The plainest useful segmentation net: three stride-2 stages, a dilated context stage, a
stride-4 skip and bilinear upsampling. Every layer is a ConvBNAct.
"""

from __future__ import annotations

import torch

from edgeseg.models.blocks import Concat, ConvBNAct, SegmentationModel, Upsample
from edgeseg.models.registry import register_model


class BasicEncDec(SegmentationModel):
    output_stride = 8

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = torch.nn.Sequential(ConvBNAct(3, w, 3, stride=2), ConvBNAct(w, w))
        self.stage2 = torch.nn.Sequential(ConvBNAct(w, 2 * w, 3, stride=2), ConvBNAct(2 * w, 2 * w))
        self.stage3 = torch.nn.Sequential(
            ConvBNAct(2 * w, 4 * w, 3, stride=2), ConvBNAct(4 * w, 4 * w, dilation=2),
            ConvBNAct(4 * w, 4 * w, dilation=4))
        self.up_context = Upsample(2)
        self.merge = Concat()
        self.fuse = ConvBNAct(6 * w, 2 * w)
        self.classifier = ConvBNAct(2 * w, num_classes, 1, bn=False, act="none")
        self.up_logits = Upsample(4, logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stage2(self.stem(x))
        context = self.stage3(skip)
        fused = self.fuse(self.merge(self.up_context(context, skip), skip))
        return self.up_logits(self.classifier(fused))


@register_model
def basic_encdec(num_classes: int, width: int = 16) -> BasicEncDec:
    """Small encoder-decoder (about 0.1 M parameters at width 16)."""
    return BasicEncDec(num_classes, width)
