"""caffe-jacinto's threshold tool: zero the smallest conv weights, layer by layer.

Per conv layer (ni = input channels, counting every group; no = output channels):
- skipped when ni < 32 and no < 32;
- bucket "high" when ni >= 256 and no >= 512, "mid" when ni >= 32 and no >= 32, else "low";
  the bucket gives the target fraction;
- the threshold t is the largest multiple of ``step = max|w| x step_factor`` for which the
  fraction of |w| <= t does not exceed the target, capped at
  min(value_max, value_maxratio x max|w|); then every |w| <= t becomes exactly zero.
The seed tool finds t by stepping (coarse, then fine); the same grid point is computed here
directly from the sorted magnitudes. A layer ends below its target when the cap binds.
With ``per_channel`` every output channel is a unit of its own (max|w|, step, cap, target).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgeseg.models.profile import trainable_convs
from edgeseg.compress.specs import ThresholdConfig


@dataclass(frozen=True)
class LayerThreshold:
    name: str
    bucket: str
    target: float
    achieved: float
    threshold: float
    capped_units: int
    units: int

    def as_dict(self) -> dict:
        return asdict(self)


def bucket_of(in_channels: int, out_channels: int) -> str | None:
    if in_channels < 32 and out_channels < 32:
        return None
    if in_channels >= 256 and out_channels >= 512:
        return "high"
    if in_channels >= 32 and out_channels >= 32:
        return "mid"
    return "low"


def grid_threshold(magnitudes: torch.Tensor, target: float, config: ThresholdConfig) -> tuple[float, bool]:
    """(t, capped) for one unit of weights, as the seed's stepping search would end."""
    values = magnitudes.flatten().double().sort().values
    peak = float(values[-1])
    if peak == 0.0:
        return 0.0, False
    step = peak * config.step_factor
    allowed = math.floor(target * values.numel() + 1e-9)
    cap_steps = math.floor(min(config.value_max, config.value_maxratio * peak) / step + 1e-9)
    if allowed >= values.numel():
        return cap_steps * step, True
    first_kept = float(values[allowed])
    steps = math.ceil(first_kept / step) - 1
    while steps > 0 and int((values <= steps * step).sum()) > allowed:
        steps -= 1
    capped = steps > cap_steps
    return min(steps, cap_steps) * step, capped


@torch.no_grad()
def threshold_model(model: nn.Module, config: ThresholdConfig) -> list[LayerThreshold]:
    """Zero small conv weights in place; one row per conv layer that was not skipped."""
    targets = {"low": config.fraction_low, "mid": config.fraction_mid, "high": config.fraction_high}
    rows = []
    for name, conv in trainable_convs(model):
        if not isinstance(conv, nn.Conv2d):
            continue
        bucket = bucket_of(conv.in_channels, conv.out_channels)
        if bucket is None:
            continue
        weight = conv.weight
        units = list(weight) if config.per_channel else [weight]
        thresholds, capped = [], 0
        for unit in units:
            t, was_capped = grid_threshold(unit.abs(), targets[bucket], config)
            unit.masked_fill_(unit.abs().double() <= t, 0.0)
            thresholds.append(t)
            capped += was_capped
        achieved = float((weight == 0).double().mean())
        rows.append(LayerThreshold(name, bucket, targets[bucket], achieved, max(thresholds), capped, len(units)))
    return rows


def threshold_model_dir(source, out, config: ThresholdConfig) -> tuple[list[LayerThreshold], dict]:
    """The threshold stage: model directory in, thresholded model directory out."""
    from edgeseg.models.model_dir import load_model_dir, save_model_dir
    from edgeseg.models.profile import profile_model

    loaded = load_model_dir(source)
    before = profile_model(loaded.model, loaded.config.input_size).sparsity
    rows = threshold_model(loaded.model, config)
    after = profile_model(loaded.model, loaded.config.input_size).sparsity
    metrics = {"stage": "threshold", **config.model_dump(), "sparsity_before": before, "sparsity_after": after}
    save_model_dir(loaded.model, loaded.config.with_stage(metrics), out)
    return rows, metrics
