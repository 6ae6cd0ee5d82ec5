"""fcn_alexnet: FCN-AlexNet as NVIDIA DIGITS trains it (REFERENCE.md section 4), on
torchvision's AlexNet layout so ImageNet weights convolutionalize into it
(``edgeseg surgery convolutionalize``).

AlexNet's conv/pool stack with conv1 padded by 100 (so every input size, however small, leaves
at least one 6x6 pool5 window and the upsampled scores cover the image), fc6 as a 6x6 conv and
fc7 as a 1x1 conv, a 1x1 score conv, x32 upsampling by a frozen grouped bilinear transposed
conv (kernel 63, stride 32, no bias), and a crop whose offset (18) is derived from the layer
stack. Pools round up like caffe's. No BatchNorm (every conv has a bias). Inputs are pixel
values minus 116 (``input_normalization``, recorded in the model directory as mean/std).
``width`` scales every channel count (1.0: 64-192-384-256-256 convs, 4096-wide fc6/fc7).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.alignment import crop_offset
from edgeseg.models.blocks import ConvBNAct, Crop, FixedBilinearDeconv, SegmentationModel
from edgeseg.models.registry import register_model

PIXEL_SHIFT = 116.0  # DIGITS' Power layer: shift -116 on 0-255 pixels
UPSCORE_KERNEL, UPSCORE_STRIDE = 63, 32


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class FCNAlexNet(SegmentationModel):
    output_stride = 1  # any input size: the crop cuts the scores to it
    input_normalization = ((PIXEL_SHIFT / 255,) * 3, (1 / 255,) * 3)  # (x / 255 - 116 / 255) * 255 = x - 116

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, fc = (scaled(c, width) for c in (64, 192, 384, 256, 256, 4096))
        self.conv1 = ConvBNAct(3, c1, 11, stride=4, padding=100, bn=False)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = ConvBNAct(c1, c2, 5, bn=False)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = ConvBNAct(c2, c3, 3, bn=False)
        self.conv4 = ConvBNAct(c3, c4, 3, bn=False)
        self.conv5 = ConvBNAct(c4, c5, 3, bn=False)
        self.pool5 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.fc6 = ConvBNAct(c5, fc, 6, padding=0, bn=False)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = ConvBNAct(fc, fc, 1, bn=False)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = ConvBNAct(fc, num_classes, 1, bn=False, act="none")
        self.upscore = FixedBilinearDeconv(num_classes, UPSCORE_KERNEL, UPSCORE_STRIDE, padding=0)
        self.crop = Crop(crop_offset(self.layer_stack()))

    def layer_stack(self) -> list[nn.Module]:
        """The layers from the image to the upsampled scores, in order (what the crop aligns)."""
        return [self.conv1, self.pool1, self.conv2, self.pool2, self.conv3, self.conv4, self.conv5, self.pool5,
                self.fc6, self.drop6, self.fc7, self.drop7, self.score_fr, self.upscore]

    def fc7_features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7's activations (after its ReLU and dropout): one 4096-vector per 6x6 pool5 window."""
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        x = self.pool5(self.conv5(self.conv4(self.conv3(x))))
        return self.drop7(self.fc7(self.drop6(self.fc6(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.crop(self.upscore(self.score_fr(self.fc7_features(x))), x)


@register_model(test_args={"width": 1 / 16})  # 57 M parameters at width 1, 0.23 M at 1/16
def fcn_alexnet(num_classes: int, width: float = 1.0) -> FCNAlexNet:
    """FCN-AlexNet (DIGITS): convolutionalized AlexNet, x32 fixed bilinear upscore, crop."""
    return FCNAlexNet(num_classes, width)
