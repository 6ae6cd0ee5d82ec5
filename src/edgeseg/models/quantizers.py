"""Fake quantization: tensors rounded to the integer grid an engine would store them on,
kept in float so training can go on (straight-through gradients).

Weights are quantized from their current values on every forward; activations from a
range tracked as an exponential moving average of batch min/max, frozen once calibrated
unless configured otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgeseg.models.quant_spec import QuantizeConfig

SMALLEST_RANGE = 2.0 ** -24


@dataclass(frozen=True)
class Grid:
    """Integers ``qmin..qmax`` stored; real value = (q - zero_point) x scale."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    fraction_length: int | None = None  # power-of-two scale = 2^-fraction_length

    @property
    def signed(self) -> bool:
        return self.zero_point > self.qmin


def power_of_two_grid(max_abs: float, bits: int, signed: bool, unsigned_storage: bool) -> Grid:
    """caffe-jacinto's dynamic fixed point: IL = ceil(log2 max|x|) (+1 sign bit), fl = bits - IL.

    ``unsigned_storage`` stores signed tensors as 0..2^bits-1 around zero point 2^(bits-1)
    (the same levels as -2^(bits-1)..2^(bits-1)-1, as ONNX Runtime prefers activations).
    """
    integer_length = math.ceil(math.log2(max(max_abs, SMALLEST_RANGE))) + (1 if signed else 0)
    fraction_length = bits - integer_length
    scale = 2.0 ** -fraction_length
    if not signed:
        return Grid(scale, 0, 0, 2 ** bits - 1, fraction_length)
    if unsigned_storage:
        return Grid(scale, 2 ** (bits - 1), 0, 2 ** bits - 1, fraction_length)
    return Grid(scale, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, fraction_length)


def affine_grid(low: float, high: float, bits: int) -> Grid:
    """Asymmetric 0..2^bits-1 over [min(low, 0), max(high, 0)] with an integer zero point,
    so that zero (ReLU outputs, padding) is exact."""
    low, high = min(low, 0.0), max(high, 0.0)
    levels = 2 ** bits - 1
    scale = max(high - low, SMALLEST_RANGE) / levels
    zero_point = int(min(levels, max(0, round(-low / scale))))
    return Grid(scale, zero_point, 0, levels)


def _fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                   stochastic: bool) -> torch.Tensor:
    if not stochastic:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    levels = x / scale + zero_point
    rounded = torch.floor(levels + torch.rand_like(levels)).clamp(qmin, qmax)
    inside = (levels >= qmin) & (levels <= qmax)
    quantized = (rounded - zero_point) * scale
    return torch.where(inside, x + (quantized - x).detach(), quantized.detach())


class ActivationQuantizer(nn.Module):
    """Tracks a tensor's range and, once enabled, fake-quantizes it on one per-tensor grid."""

    def __init__(self, config: QuantizeConfig) -> None:
        super().__init__()
        self.scheme, self.bits = config.scheme, config.activation_bits
        self.momentum, self.freeze = config.ema_momentum, config.freeze_ranges
        self.max_range = config.activation_max
        self.stochastic = config.stochastic_rounding and config.scheme == "power-of-two"
        self.calibrating = False
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("observed", torch.zeros(()))
        self.register_buffer("enabled", torch.zeros(()))
        self._source: ActivationQuantizer | None = None

    def follow(self, source: "ActivationQuantizer") -> None:
        """Use ``source``'s grid instead of tracking a range: a resize then stays on its input's
        grid, so an integer engine can run it on the stored integers."""
        object.__setattr__(self, "_source", source)  # a reference, not a child module

    def grid(self) -> Grid:
        if self._source is not None:
            return self._source.grid()
        if self.scheme == "low-bit":
            levels = 2 ** self.bits - 1
            return Grid(self.max_range / levels, 0, 0, levels)
        low, high = float(self.min_val), float(self.max_val)
        if self.scheme == "power-of-two":
            return power_of_two_grid(max(-low, high), self.bits, low < 0, unsigned_storage=True)
        return affine_grid(low, high, self.bits)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if self.observed == 0:
            self.min_val.copy_(low)
            self.max_val.copy_(high)
        else:
            self.min_val.mul_(self.momentum).add_((1 - self.momentum) * low)
            self.max_val.mul_(self.momentum).add_((1 - self.momentum) * high)
        self.observed += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracking = self.calibrating or (self.training and not self.freeze and not torch.onnx.is_in_onnx_export())
        if tracking and self._source is None:
            self.observe(x)
        if not self.enabled:
            return x
        grid = self.grid()
        scale = torch.tensor(grid.scale, dtype=torch.float32, device=x.device)
        zero_point = torch.tensor(grid.zero_point, dtype=torch.int32, device=x.device)
        if self.scheme == "low-bit":
            if torch.onnx.is_in_onnx_export():  # the clip to 2^bits - 1 is inserted on the integers (onnx_graph)
                return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
            return torch.fake_quantize_per_tensor_affine(x.clamp(0.0, self.max_range), scale, zero_point, 0, 255)
        return _fake_quantize(x, scale, zero_point, grid.qmin, grid.qmax, self.stochastic and self.training)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bits={self.bits}"


class WeightQuantizer(nn.Module):
    """Quantizes conv weights from their current values: per output channel with float scales
    (``float``) or per tensor with a power-of-two scale; symmetric, |q| <= the config's qmax.
    Zeros stay exactly zero. Holds no state of its own."""

    def __init__(self, config: QuantizeConfig) -> None:
        super().__init__()
        self.scheme, self.bits, self.qmax = config.scheme, config.weight_bits, config.weight_qmax
        self.stochastic = config.stochastic_rounding and config.scheme == "power-of-two"
        self.export_scales: torch.Tensor | None = None

    def scales(self, weight: torch.Tensor) -> torch.Tensor:
        """One scale per output channel (the same value repeated for power-of-two and low-bit)."""
        w = weight.detach().float()
        if self.scheme == "low-bit":
            return w.abs().mean().expand(w.shape[0]).clone()
        if self.scheme == "float":
            return w.abs().flatten(1).amax(dim=1).clamp_min(SMALLEST_RANGE) / self.qmax
        fraction_length = self.fraction_length(weight)
        return torch.full((w.shape[0],), 2.0 ** -fraction_length, device=w.device)

    def fraction_length(self, weight: torch.Tensor) -> int:
        """Power-of-two scheme: the largest fl with max|w| x 2^fl <= qmax + 1 (the level past
        qmax clips by at most half a step, as in the seed's dynamic fixed point)."""
        max_abs = float(weight.detach().abs().max())
        return math.floor(math.log2(self.qmax + 1)) - math.ceil(math.log2(max(max_abs, SMALLEST_RANGE)))

    @torch.no_grad()
    def bake(self, weight: torch.Tensor) -> torch.Tensor:
        """The quantized weight, remembering its scales for export (where the weight is
        stored as int8 levels with exactly these scales)."""
        self.export_scales = self.scales(weight).to(weight.dtype)
        if self.scheme == "low-bit":
            return binary_weight(weight)
        return torch.fake_quantize_per_channel_affine(
            weight, self.export_scales, torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device),
            0, -self.qmax, self.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        zero_points = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        if torch.onnx.is_in_onnx_export():
            if self.export_scales is None:
                raise RuntimeError("bake() the weights before exporting a quantized model")
            return torch.fake_quantize_per_channel_affine(weight, self.export_scales, zero_points, 0, -128, 127)
        if self.scheme == "low-bit":
            return weight + (binary_weight(weight) - weight).detach()
        scales = self.scales(weight).to(weight.dtype)
        if self.stochastic and self.training:
            levels = weight / scales.view(-1, 1, 1, 1)
            rounded = torch.floor(levels + torch.rand_like(levels)).clamp(-self.qmax, self.qmax)
            quantized = rounded * scales.view(-1, 1, 1, 1)
            return weight + (quantized - weight).detach()
        return torch.fake_quantize_per_channel_affine(weight, scales, zero_points, 0, -self.qmax, self.qmax)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bits={self.bits}, qmax={self.qmax}"


def binary_weight(weight: torch.Tensor) -> torch.Tensor:
    """Blueoil's binary mean scaling: sign(W) x mean|W| over the whole tensor (zeros stay zero)."""
    return torch.sign(weight) * weight.abs().mean()
