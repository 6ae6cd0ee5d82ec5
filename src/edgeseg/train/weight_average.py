"""An exponential moving average of a model's weights, evaluated and saved in their place."""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """``average = decay * average + (1 - decay) * weights`` after every optimizer step, over
    parameters and BatchNorm statistics alike (integer buffers are copied). The decay ramps
    up as ``(1 + updates) / (10 + updates)`` so the first steps' weights do not dominate."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int) -> None:
        decay = min(self.decay, (1 + updates) / (10 + updates))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, 1.0 - decay)
            else:
                mine.copy_(theirs)
