"""Sparsity during training, with caffe-jacinto's solver options (REFERENCE.md section 1).

All of it acts on trainable conv weights, after each optimizer step:
- L1 (``optimizer.regularization: l1``): a proximal shrink |w| -> max(|w| - lr x decay, 0),
  which lands weights on exact zeros instead of dithering around them as a subgradient does;
- ``threshold_weights``: weights with |w| <= ``sparsity_threshold`` become zero;
- ``sparse`` (WEIGHT_DISCONNECTED_ELTWISE): a mask (|w| > sparsity_threshold) taken at the
  start multiplies every gradient and, after the step, the weights, so zeros stay zero
  under momentum, Adam state and weight decay;
- incremental mode (``sparsity_start_factor``): every ``sparsity_step_iter`` steps each
  layer the threshold tool would not skip (32 or more inputs or outputs) is cut per output
  channel to the current fraction, which starts at the
  start factor and grows by ``sparsity_step_factor`` up to ``sparsity_target``; the zeros
  made so far are frozen as in ``sparse``;
- ``sparsity_target`` + ``sparsity_lr_mult``: a layer whose zero fraction reached the target
  trains on at lr x mult;
- ``display_sparsity``: per-layer and total zero fractions every N steps.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeseg.compress.threshold import bucket_of
from edgeseg.models.profile import trainable_convs
from edgeseg.schema import StrictModel


class SparsityConfig(StrictModel):
    display_sparsity: int = Field(0, ge=0, description="steps between sparsity logs (0: never)")
    threshold_weights: bool = Field(False, description="zero |w| <= sparsity_threshold after every step")
    sparsity_threshold: float = Field(0.0, ge=0, description="magnitude counted (and cut) as zero")
    sparse: bool = Field(False, description="freeze the zeros present at the start (sparse fine-tuning)")
    sparsity_target: float | None = Field(None, gt=0, lt=1, description="per-layer zero fraction to reach")
    sparsity_lr_mult: float = Field(0.01, ge=0, description="lr multiplier of a layer at its target")
    sparsity_start_factor: float | None = Field(None, gt=0, lt=1, description="incremental mode: first fraction")
    sparsity_step_factor: float = Field(0.01, gt=0, lt=1, description="incremental mode: fraction added per step")
    sparsity_step_iter: int = Field(1000, ge=1, description="incremental mode: steps between raises")

    @model_validator(mode="after")
    def _incremental_needs_target(self):
        if self.sparsity_start_factor is not None and self.sparsity_target is None:
            raise ValueError("sparsity_start_factor (incremental mode) needs sparsity_target")
        return self

    @property
    def active(self) -> bool:
        return bool(self.threshold_weights or self.sparse or self.sparsity_target is not None)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in trainable_convs(model) if isinstance(m, nn.Conv2d)}


def zero_fractions(layers: dict[str, nn.Conv2d], threshold: float = 0.0) -> tuple[dict[str, float], float]:
    """Per conv layer and total fraction of weights with |w| <= threshold."""
    per_layer, zeros, total = {}, 0, 0
    for name, conv in layers.items():
        count = int((conv.weight.detach().abs() <= threshold).sum())
        per_layer[name] = count / conv.weight.numel()
        zeros, total = zeros + count, total + conv.weight.numel()
    return per_layer, zeros / total if total else 0.0


def per_channel_cut(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask keeping, in every output channel, all but the floor(fraction x n) smallest |w|."""
    flat = weight.detach().abs().flatten(1)
    count = math.floor(fraction * flat.shape[1] + 1e-9)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if count:
        keep.scatter_(1, flat.topk(count, dim=1, largest=False).indices, False)
    return keep.view_as(weight)


class SparsityControl:
    """Applies the options above around one model and its optimizer."""

    def __init__(self, config: SparsityConfig, model: nn.Module, l1_strength: float = 0.0) -> None:
        self.config, self.l1_strength = config, l1_strength
        self.layers = conv_layers(model)
        self.masks: dict[str, torch.Tensor] = {}
        if config.sparse or config.sparsity_start_factor is not None:
            for name, conv in self.layers.items():
                self.masks[name] = conv.weight.detach().abs() > config.sparsity_threshold
                conv.weight.register_hook(self._mask_gradient(name))
            self.apply_masks()

    def _mask_gradient(self, name: str):
        return lambda grad: grad * self.masks[name].to(grad.dtype)

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, mask in self.masks.items():
            self.layers[name].weight.mul_(mask)

    def incremental_fraction(self, step: int) -> float | None:
        c = self.config
        if c.sparsity_start_factor is None or step % c.sparsity_step_iter:
            return None
        raises = step // c.sparsity_step_iter - 1
        return min(c.sparsity_target, c.sparsity_start_factor + raises * c.sparsity_step_factor)

    @torch.no_grad()
    def after_step(self, step: int, lr: float, lr_mults: dict[str, float]) -> None:
        """Call after optimizer.step() with the step count so far and the base lr used."""
        c = self.config
        for name, conv in self.layers.items():
            weight = conv.weight
            if self.l1_strength:
                shrink = lr * lr_mults.get(name, 1.0) * self.l1_strength
                weight.copy_(weight.sign() * (weight.abs() - shrink).clamp_min(0))
            if c.threshold_weights:
                weight.masked_fill_(weight.abs() <= c.sparsity_threshold, 0.0)
        fraction = self.incremental_fraction(step)
        if fraction is not None:
            for name, conv in self.layers.items():
                if bucket_of(conv.in_channels, conv.out_channels) is not None:
                    self.masks[name] &= per_channel_cut(conv.weight, fraction)
        self.apply_masks()

    def lr_mults(self) -> dict[str, float]:
        """Per-layer lr multipliers: ``sparsity_lr_mult`` for layers at their target."""
        c = self.config
        if c.sparsity_target is None:
            return {}
        per_layer, _ = zero_fractions(self.layers, c.sparsity_threshold)
        return {name: (c.sparsity_lr_mult if value >= c.sparsity_target - 1e-9 else 1.0)
                for name, value in per_layer.items()}

