"""icnet: the image cascade network (Zhao et al., ECCV 2018), seed 002's real-time model.

Three branches see the image at three resolutions. The full image goes through three strided
3x3 convs (stride 8). The half image goes through the first stages of a PSPNet trunk (stride
8 of the half image, 1/16); those features, halved again (1/32), go through the trunk's
dilated stages and the fast pyramid pooling (average pools at ``pooling_factors`` added to
the features, then a 1x1 conv). So the 1/2 and 1/4 branches share the trunk's weights, and
only the coarsest branch runs the deep layers. Cascade feature fusion units merge coarse into
fine: upsample x2, a dilated 3x3 conv, plus a 1x1 projection of the finer branch, ReLU. The
main head classifies the 1/4 map and upsamples x4.

Cascade label guidance: each fusion unit also classifies its upsampled coarse input; those
logits (1/16: "sub4", 1/8: "sub24") train with loss weights ``branch_loss_weights`` (main,
sub24, sub4; the seed's 1.0 / 0.4 / 0.4) and never reach evaluation or export.
``filter_scale`` scales every channel count (ICNet's pruned model is filter_scale 0.5),
``mobile_ops_only`` swaps the trunk's ResNet blocks for MobileNetV2 blocks, and
``single_branch`` builds the quarter-resolution branch alone with its own classifier (the
seed's pretrain_single_branch_mode), whose trunk and pooling weights load into the full model
by name.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.architectures.resnet import DilatedBackbone, scaled
from edgeseg.models.blocks import AdaptiveAvgPool, Add, ConvBNAct, SegmentationModel, Upsample
from edgeseg.models.registry import register_model


class FastPyramidPooling(nn.Module):
    """ICNet's pooling: the features plus, per factor, their average pool upsampled back."""

    def __init__(self, factors: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(AdaptiveAvgPool(f) for f in factors)
        self.upsample = Upsample()
        self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, *(self.upsample(pool(x), x) for pool in self.pools))


class CascadeFeatureFusion(nn.Module):
    """Coarse features upsampled x2 and convolved (3x3, dilation 2), plus the fine features
    projected (1x1), ReLU; ``classifier`` reads the upsampled coarse features (label guidance)."""

    def __init__(self, coarse: int, fine: int, out: int, num_classes: int) -> None:
        super().__init__()
        self.upsample = Upsample(2)
        self.coarse = ConvBNAct(coarse, out, 3, dilation=2, act="none")
        self.fine = ConvBNAct(fine, out, 1, act="none")
        self.add = Add()
        self.act = nn.ReLU(inplace=True)
        self.classifier = ConvBNAct(coarse, num_classes, 1, bn=False, act="none")

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = self.upsample(coarse, fine)
        return self.act(self.add(self.coarse(up), self.fine(fine))), up

    def guidance(self, up: torch.Tensor) -> torch.Tensor:
        return self.classifier(up)


class ICNet(SegmentationModel):
    output_stride = 32
    checkpoint_modules = ("sub1", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4", "ppm",
                          "cff24", "cff124")

    def __init__(self, num_classes: int, depth: int | str = 18, filter_scale: float = 0.5,
                 pooling_factors: tuple[int, ...] = (1, 2, 3, 4), mobile_ops_only: bool = False,
                 single_branch: bool = False, branch_loss_weights: tuple[float, float, float] = (1.0, 0.4, 0.4)) -> None:
        super().__init__()
        s = lambda channels: scaled(channels, filter_scale)  # noqa: E731
        self.single_branch = single_branch
        self.halve = Upsample(0.5)
        self.backbone = DilatedBackbone("mobile" if mobile_ops_only else depth, filter_scale)
        second, fourth = self.backbone.channels[1], self.backbone.channels[3]
        self.ppm = FastPyramidPooling(tuple(pooling_factors))
        self.reduce = ConvBNAct(fourth, s(256), 1)
        if single_branch:
            self.single_classifier = ConvBNAct(s(256), num_classes, 1, bn=False, act="none")
            self.upsample = Upsample(32, logits=True)
            return
        self.sub1 = nn.Sequential(ConvBNAct(3, s(32), 3, stride=2), ConvBNAct(s(32), s(32), 3, stride=2),
                                  ConvBNAct(s(32), s(64), 3, stride=2))
        self.cff24 = CascadeFeatureFusion(s(256), second, s(128), num_classes)
        self.cff124 = CascadeFeatureFusion(s(128), s(64), s(128), num_classes)
        self.up4 = Upsample(2)
        self.classifier = ConvBNAct(s(128), num_classes, 1, bn=False, act="none")
        self.upsample = Upsample(4, logits=True)
        main, sub24, sub4 = branch_loss_weights
        self.head_weights = {"main": main, "sub24": sub24, "sub4": sub4}

    def _quarter(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the half image's stride-8 features: 1/16, the pooled coarse branch: 1/32)."""
        sub2 = self.backbone.early(self.halve(x))
        _, deep = self.backbone.late(self.halve(sub2))
        return sub2, self.reduce(self.ppm(deep))

    def _cascade(self, x: torch.Tensor):
        sub2, sub4 = self._quarter(x)
        sub24, up4 = self.cff24(sub4, sub2)
        sub124, up24 = self.cff124(sub24, self.sub1(x))
        return self.upsample(self.classifier(self.up4(sub124))), up24, up4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_branch:
            return self.upsample(self.single_classifier(self._quarter(x)[1]))
        return self._cascade(x)[0]

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.single_branch:
            return {"main": self.forward_features(x)}
        main, up24, up4 = self._cascade(x)
        heads = {"main": main}
        if self.cff24.classifier is not None:
            heads.update(sub24=self.cff124.guidance(up24), sub4=self.cff24.guidance(up4))
        return heads

    @property
    def has_auxiliary_heads(self) -> bool:
        return not self.single_branch and self.cff24.classifier is not None

    def drop_auxiliary_heads(self) -> None:
        if not self.single_branch:
            self.cff24.classifier = None
            self.cff124.classifier = None
        self.head_weights = {"main": 1.0}
        self.auxiliary_dropped = True


@register_model(test_args={"filter_scale": 0.125})
def icnet(num_classes: int, depth: int | str = 18, filter_scale: float = 0.5,
          pooling_factors: tuple[int, ...] = (1, 2, 3, 4), mobile_ops_only: bool = False, single_branch: bool = False,
          branch_loss_weights: tuple[float, float, float] = (1.0, 0.4, 0.4)) -> ICNet:
    """ICNet: a three-resolution cascade on a PSPNet trunk (``depth``, ``filter_scale``), fast
    pyramid pooling (``pooling_factors``), cascade label guidance (``branch_loss_weights``)."""
    return ICNet(num_classes, depth, filter_scale, tuple(pooling_factors), mobile_ops_only, single_branch,
                 tuple(branch_loss_weights))
