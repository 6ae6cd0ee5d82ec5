"""A flat registry: one function per architecture, registered by name when its module is
imported (``edgeseg.models.zoo`` imports them all and builds models from the registry)."""

from __future__ import annotations

from typing import Callable

from torch import nn


MODELS: dict[str, Callable[..., nn.Module]] = {}
TEST_ARGUMENTS: dict[str, dict] = {}  # name -> arguments of a variant small enough for the test suite


def register_model(fn: Callable[..., nn.Module] | None = None, *, test_args: dict | None = None):
    """Register ``fn(num_classes, **kwargs)`` under its function name; ``@register_model(test_args=...)``
    also names the arguments of a tiny variant for architecture-wide tests (default: none, the
    defaults are small enough)."""
    if fn is None:
        return lambda f: register_model(f, test_args=test_args)
    if fn.__name__ in MODELS:
        raise ValueError(f"model '{fn.__name__}' registered twice")
    MODELS[fn.__name__] = fn
    TEST_ARGUMENTS[fn.__name__] = dict(test_args or {})
    return fn
