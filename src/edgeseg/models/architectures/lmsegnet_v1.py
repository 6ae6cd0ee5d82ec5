"""lmsegnet_v1: Blueoil's LmSegnetV1 (LeapMind), the network of its low-bit segmentation flow.

Eleven 3x3 convs (the first 1x1) with no pooling and no interpolation: space-to-depth x2
three times on the way down (to stride 8), depth-to-space x2 three times on the way up.
Encoder 16 / 64 64 / 256 256 256 256, decoder 128 / 128 / 32, then the classifier. Every
conv is a ConvBNAct with ReLU, which Blueoil's quantized variant replaces by its 2-bit
activation quantizer (see compress.quant, scheme ``low-bit``). At width 1: 2.56 M parameters,
11.7 GMACs at 360x480 (REFERENCE.md section 3). ``width`` scales every layer but the
classifier. Blueoil's last block also ends in BN and the activation; here the classifier is a
plain linear conv (logits), as in every other edgeseg model.
"""

from __future__ import annotations

from torch import nn

from edgeseg.models.blocks import ConvBNAct, DepthToSpace, SegmentationModel, SpaceToDepth
from edgeseg.models.registry import register_model


class LmSegNetV1(SegmentationModel):
    output_stride = 8

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()

        def ch(channels: int) -> int:
            return max(4, int(round(channels * width / 4)) * 4)  # depth-to-space needs multiples of 4

        e1, e2, e3, d1, d2, d3 = ch(16), ch(64), ch(256), ch(128), ch(128), ch(32)
        self.encoder = nn.Sequential(
            SpaceToDepth(), ConvBNAct(3 * 4, e1, 1),
            SpaceToDepth(), ConvBNAct(e1 * 4, e2), ConvBNAct(e2, e2),
            SpaceToDepth(), ConvBNAct(e2 * 4, e3), ConvBNAct(e3, e3), ConvBNAct(e3, e3), ConvBNAct(e3, e3))
        self.decoder = nn.Sequential(
            DepthToSpace(), ConvBNAct(e3 // 4, d1),
            DepthToSpace(), ConvBNAct(d1 // 4, d2),
            DepthToSpace(), ConvBNAct(d2 // 4, d3))
        self.classifier = ConvBNAct(d3, num_classes, 3, bn=False, act="none")

    def forward_features(self, x):
        return self.classifier(self.decoder(self.encoder(x)))


@register_model
def lmsegnet_v1(num_classes: int, width: float = 1.0) -> LmSegNetV1:
    """Blueoil's LmSegnetV1: space-to-depth encoder, depth-to-space decoder, 3x3 convs only."""
    return LmSegNetV1(num_classes, width)
