"""pspnet: Pyramid Scene Parsing Network (Zhao et al., CVPR 2017), ICNet's stage 0 (seed 002).

A dilated ResNet-style trunk at output stride 8 (``depth`` 18/34/50 or "mobile", ``width``
scales the channels), the pyramid pooling module (average pools to each of ``bins``, a 1x1
conv each, upsampled and concatenated with the features, then a 3x3 conv), a classifier and
x8 bilinear upsampling. The auxiliary head on stage 3 (a 3x3 conv and a classifier, loss
weight 0.4 as the paper) trains only: evaluation, export and compression see the main output.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.architectures.resnet import DilatedBackbone, scaled
from edgeseg.models.blocks import AdaptiveAvgPool, Concat, ConvBNAct, SegmentationModel, Upsample
from edgeseg.models.registry import register_model


class PyramidPoolingModule(nn.Module):
    """PSPNet's context module: per bin, pool and project to in/len(bins) channels, upsample
    to the input and concatenate with it; a 3x3 conv fuses."""

    def __init__(self, in_channels: int, out_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = max(8, in_channels // len(bins))
        self.pools = nn.ModuleList(AdaptiveAvgPool(grid) for grid in bins)
        self.branches = nn.ModuleList(ConvBNAct(in_channels, branch, 1) for _ in bins)
        self.upsample = Upsample()
        self.concat = Concat()
        self.fuse = ConvBNAct(in_channels + len(bins) * branch, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.upsample(conv(pool(x)), x) for pool, conv in zip(self.pools, self.branches)]
        return self.fuse(self.concat(x, *pooled))


class PSPNet(SegmentationModel):
    output_stride = 8
    auxiliary_modules = ("aux",)
    checkpoint_modules = ("backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4",
                          "ppm")

    def __init__(self, num_classes: int, depth: int | str = 18, width: float = 0.5, bins: tuple[int, ...] = (1, 2, 3, 6),
                 aux_weight: float = 0.4) -> None:
        super().__init__()
        self.backbone = DilatedBackbone(depth, width)
        third, fourth = self.backbone.channels[2], self.backbone.channels[3]
        self.ppm = PyramidPoolingModule(fourth, scaled(512, width), tuple(bins))
        self.classifier = ConvBNAct(scaled(512, width), num_classes, 1, bn=False, act="none")
        self.aux = nn.Sequential(ConvBNAct(third, scaled(256, width), 3),
                                 ConvBNAct(scaled(256, width), num_classes, 1, bn=False, act="none"))
        self.upsample = Upsample(8, logits=True)
        self.head_weights = {"main": 1.0, "aux": aux_weight}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _, features = self.backbone.late(self.backbone.early(x))
        return self.upsample(self.classifier(self.ppm(features)))

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        third, features = self.backbone.late(self.backbone.early(x))
        heads = {"main": self.upsample(self.classifier(self.ppm(features)))}
        if self.aux is not None:
            heads["aux"] = self.aux(third)
        return heads


@register_model(test_args={"width": 0.125})
def pspnet(num_classes: int, depth: int | str = 18, width: float = 0.5, bins: tuple[int, ...] = (1, 2, 3, 6),
           aux_weight: float = 0.4) -> PSPNet:
    """PSPNet: dilated ResNet-``depth`` trunk (``width`` x 64-512), pyramid pooling over ``bins``,
    an auxiliary stage-3 head for training (loss weight ``aux_weight``)."""
    return PSPNet(num_classes, depth, width, tuple(bins), aux_weight)
