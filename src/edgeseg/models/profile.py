"""Per-layer facts about a model at a given input size: shapes, parameters, MACs, and the
sparsity of conv weights (with the MACs left once zero weights are skipped)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeseg.models.blocks import FixedBilinearDeconv


@dataclass
class LayerProfile:
    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    output_size: tuple[int, int]
    params: int
    macs: int
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0

    @property
    def effective_macs(self) -> int:
        """MACs an engine that skips zero weights would do."""
        return round(self.macs * (1 - self.sparsity))


@dataclass
class ModelProfile:
    layers: list[LayerProfile]
    params: int
    input_size: tuple[int, int]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def effective_macs(self) -> int:
        return sum(layer.effective_macs for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of exactly-zero weights over all trainable conv weights."""
        weights = sum(layer.weights for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / weights if weights else 0.0


def trainable_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.ConvTranspose2d]]:
    """The conv and deconv layers whose weights train (the ones sparsity is counted over)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def zero_weight_count(model: nn.Module) -> int:
    """Exactly-zero entries over all trainable conv weights."""
    return sum(int((m.weight == 0).sum()) for _, m in trainable_convs(model))


@torch.no_grad()
def profile_model(model: nn.Module, input_size: tuple[int, int]) -> ModelProfile:
    """Run one forward pass at ``input_size`` (H, W) and record every conv and deconv.

    MACs of a conv = output elements x (input channels / groups) x kernel area. Fixed
    (non-trainable) deconvolutions are counted in MACs but not in weights or sparsity.
    """
    layers: list[LayerProfile] = []
    hooks = []

    def record(name: str, module: nn.Module):
        def hook(_, inputs, output):
            h, w = output.shape[-2:]
            if isinstance(module, FixedBilinearDeconv):
                k, s = module.weight.shape[-2:], (module.stride, module.stride)
                kind, cin, cout, d, g = "fixed_deconv", module.channels, module.channels, (1, 1), module.channels
                weight, trainable = module.weight, False
            else:
                kind = "deconv" if isinstance(module, nn.ConvTranspose2d) else "conv"
                cin, cout, k, s, d, g = (module.in_channels, module.out_channels, module.kernel_size,
                                         module.stride, module.dilation, module.groups)
                weight, trainable = module.weight, True
            if kind == "conv":
                macs = output.shape[0] * cout * h * w * (cin // g) * k[0] * k[1]
            else:  # transposed: every input element is spread over a k x k window
                ih, iw = inputs[0].shape[-2:]
                macs = inputs[0].shape[0] * cin * ih * iw * (cout // g) * k[0] * k[1]
            params = sum(p.numel() for p in module.parameters(recurse=False))
            layers.append(LayerProfile(
                name, kind, cin, cout, tuple(k), tuple(s), tuple(d), g, (h, w), params, macs // output.shape[0],
                weight.numel() if trainable else 0, int((weight == 0).sum()) if trainable else 0))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, FixedBilinearDeconv)):
            hooks.append(module.register_forward_hook(record(name, module)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    params = sum(p.numel() for p in model.parameters())
    return ModelProfile(layers, params, tuple(input_size))
