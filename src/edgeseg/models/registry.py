"""A flat registry: one function per architecture, registered by name when its module is
imported (``edgeseg.models.zoo`` imports them all and builds models from the registry)."""

from __future__ import annotations

from typing import Callable

from torch import nn


MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(num_classes, **kwargs)`` under its function name."""
    if fn.__name__ in MODELS:
        raise ValueError(f"model '{fn.__name__}' registered twice")
    MODELS[fn.__name__] = fn
    return fn
