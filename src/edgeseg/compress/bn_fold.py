"""BN folding (caffe-jacinto's "optimize" step): merge every BatchNorm into the conv before it.

For a conv followed by BN, per output channel o, with s = gamma_o / sqrt(var_o + eps):
W'_o = s W_o and b'_o = (b_o - mean_o) s + beta_o (the bias is created when the conv has
none). Zeros stay zero because each output channel is only scaled. A BatchNorm with no conv
directly before it (after a concat with pooled channels, as in ENet-style downsampling)
becomes a per-channel affine ``ChannelAffine`` carrying the same scale and shift, so the
folded model has no BatchNorm layer and computes the same function.

``strip_batchnorm`` makes the same structural change without weights: a folded model
directory is rebuilt from its config by creating the architecture, stripping, then loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeseg.models.blocks import ConvBNAct


class ChannelAffine(nn.Module):
    """y = x * scale[c] + shift[c] (caffe's Scale layer with bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


@dataclass(frozen=True)
class FoldResult:
    folded_into_conv: int
    made_affine: int


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded")
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _give_bias(conv: nn.Conv2d) -> None:
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))


def _replace_free_batchnorms(model: nn.Module, with_weights: bool) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                affine = ChannelAffine(child.num_features).to(child.running_mean.device
                                                              if child.running_mean is not None else "cpu")
                if with_weights:
                    scale, shift = _bn_scale_shift(child)
                    affine.scale.data.copy_(scale)
                    affine.shift.data.copy_(shift)
                setattr(parent, name, affine)
                count += 1
    return count


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> FoldResult:
    """Fold in place; returns how many BNs went into convs and how many became affines."""
    folded = 0
    for block in model.modules():
        if isinstance(block, ConvBNAct) and isinstance(block.bn, nn.BatchNorm2d):
            scale, shift = _bn_scale_shift(block.bn)
            conv = block.conv
            _give_bias(conv)
            weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
            conv.weight.copy_(weight.to(conv.weight.dtype))
            conv.bias.copy_((conv.bias.double() * scale + shift).to(conv.bias.dtype))
            block.bn = nn.Identity()
            folded += 1
    return FoldResult(folded, _replace_free_batchnorms(model, with_weights=True))


def strip_batchnorm(model: nn.Module) -> nn.Module:
    """The folded architecture with placeholder values, ready for a strict weight load."""
    for block in model.modules():
        if isinstance(block, ConvBNAct) and isinstance(block.bn, nn.BatchNorm2d):
            _give_bias(block.conv)
            block.bn = nn.Identity()
    _replace_free_batchnorms(model, with_weights=False)
    return model


def fold_model_dir(source, out, check_images: list[torch.Tensor] | None = None) -> dict:
    """The fold-bn stage: read a model directory, fold, check, write ``out``.

    The folded model is compared with the original on ``check_images`` (normalised CHW
    tensors, e.g. real validation images; two seeded random images at the model's input
    size when None); the largest absolute logit difference goes into the returned metrics
    and the model's history.
    """
    from edgeseg.errors import ModelError
    from edgeseg.inference import TorchPredictor
    from edgeseg.models.model_dir import load_model_dir, save_model_dir
    from edgeseg.models.profile import zero_weight_count

    loaded = load_model_dir(source)
    if loaded.config.batchnorm_folded:
        raise ModelError(f"{source}: its BatchNorms are already folded")
    if not check_images:
        generator = torch.Generator().manual_seed(0)
        check_images = list(torch.randn(2, 3, *loaded.config.input_size, generator=generator))
    predictor = TorchPredictor(loaded.model, loaded.config, torch.device("cpu"))
    before = [predictor.logits(image[None]) for image in check_images]
    zeros_before = zero_weight_count(loaded.model)
    result = fold_batchnorm(loaded.model)
    after = [predictor.logits(image[None]) for image in check_images]
    metrics = {"stage": "fold-bn", "folded_into_conv": result.folded_into_conv, "made_affine": result.made_affine,
               "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(after, before)),
               "check_images": len(check_images), "zeros_before": zeros_before,
               "zeros_after": zero_weight_count(loaded.model)}
    config = loaded.config.model_copy(update={"batchnorm_folded": True,
                                              "history": [*loaded.config.history, metrics]})
    save_model_dir(loaded.model, config, out)
    return metrics
