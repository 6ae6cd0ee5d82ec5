"""An exponential moving average of a model's weights, evaluated and saved in their place."""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """``average = decay * average + (1 - decay) * weights`` after every optimizer step, over
    parameters and BatchNorm statistics alike (integer buffers are copied). The decay ramps
    up as ``(1 + updates) / (10 + updates)`` so the first steps' weights do not dominate.
    ``source``'s tensors are paired once: the optimizer and BatchNorm update them in place."""

    def __init__(self, source: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), source.state_dict().values(), strict=True))
        self._floats = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
        self._counters = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self, updates: int) -> None:
        decay = min(self.decay, (1 + updates) / (10 + updates))
        for mine, theirs in self._floats:
            mine.lerp_(theirs, 1.0 - decay)
        for mine, theirs in self._counters:
            mine.copy_(theirs)
