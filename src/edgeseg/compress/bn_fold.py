"""BN folding (caffe-jacinto's "optimize" step): merge every BatchNorm into the conv before it.

For a conv followed by BN, per output channel o, with s = gamma_o / sqrt(var_o + eps):
W'_o = s W_o and b'_o = (b_o - mean_o) s + beta_o (the bias is created when the conv has
none). Zeros stay zero because each output channel is only scaled. A BatchNorm with no conv
directly before it (after a concat with pooled channels, as in ENet-style downsampling)
becomes a per-channel affine ``ChannelAffine`` carrying the same scale and shift, so the
folded model has no BatchNorm layer and computes the same function.

The structure of the result (``ChannelAffine``, ``strip_batchnorm``) lives in
``edgeseg.models.folded``, so loading a folded model never imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeseg.errors import ModelError
from edgeseg.predict.predictors import TorchPredictor
from edgeseg.models.folded import ChannelAffine, block_batchnorms, give_bias, replace_free_batchnorms
from edgeseg.models.model_dir import load_model_dir, save_model_dir
from edgeseg.models.profile import zero_weight_count


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


def _affine_with_weights(bn: nn.BatchNorm2d) -> ChannelAffine:
    scale, shift = _bn_scale_shift(bn)
    affine = ChannelAffine(bn.num_features).to(bn.running_mean.device)
    affine.scale.data.copy_(scale)
    affine.shift.data.copy_(shift)
    return affine


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> FoldResult:
    """Fold in place; returns how many BNs went into convs and how many became affines."""
    blocks = block_batchnorms(model)
    for block in blocks:
        scale, shift = _bn_scale_shift(block.bn)
        conv = block.conv
        give_bias(conv)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        conv.weight.copy_(weight.to(conv.weight.dtype))
        conv.bias.copy_((conv.bias.double() * scale + shift).to(conv.bias.dtype))
        block.bn = nn.Identity()
    return FoldResult(len(blocks), replace_free_batchnorms(model, _affine_with_weights))


def fold_model_dir(source, out, check_images: list[torch.Tensor] | None = None) -> dict:
    """The fold-bn stage: read a model directory, fold, check, write ``out``.

    The folded model is compared with the original on ``check_images`` (normalised CHW
    tensors, e.g. real validation images; two seeded random images at the model's input
    size when None); the largest absolute logit difference goes into the returned metrics
    and the model's history.
    """
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
    save_model_dir(loaded.model, loaded.config.with_stage(metrics, batchnorm_folded=True), out)
    return metrics
