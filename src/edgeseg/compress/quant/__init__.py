"""Quantization: simulated integer tensors for calibration and quantization-aware training,
stored in a model directory as a spec that rebuilds the same quantized model."""

from __future__ import annotations

from torch import nn

from edgeseg.compress.quant.config import QuantizeConfig
from edgeseg.compress.quant.graph import (activation_quantizers, attach_quantizers, bake_weights, calibrate,
                                          quantization_points)
from edgeseg.schema import validate

__all__ = ["QuantizeConfig", "activation_quantizers", "attach_from_spec", "attach_quantizers", "bake_weights",
           "calibrate", "quantization_points", "quantization_spec"]


def quantization_spec(config: QuantizeConfig, points: list[str], follow: dict[str, str],
                      float_layers: list[str]) -> dict:
    """What config.json stores under 'quantization'."""
    return {"spec": config.model_dump(mode="json"), "points": list(points), "follow": dict(follow),
            "float_layers": list(float_layers)}


def attach_from_spec(model: nn.Module, stored: dict) -> nn.Module:
    """Attach the quantizers a model directory's config.json describes."""
    config = validate(QuantizeConfig, stored.get("spec", {}), "quantization.spec")
    points = stored.get("points")
    if not isinstance(points, list):
        raise ValueError("'points' must be a list of module names")
    follow = stored.get("follow", {})
    if not isinstance(follow, dict):
        raise ValueError("'follow' must map module names to the points whose grid they use")
    float_layers = stored.get("float_layers", [])
    if not isinstance(float_layers, list):
        raise ValueError("'float_layers' must be a list of module names")
    return attach_quantizers(model, config, points, follow, float_layers)
