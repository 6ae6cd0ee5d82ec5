"""A flat registry: one function per architecture, looked up by name."""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from torch import nn

from edgeseg.errors import ModelError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(num_classes, **kwargs)`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model '{fn.__name__}' registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    _import_architectures()
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered architecture; a bad name or argument is a one-line ModelError.

    The model remembers how it was built in ``model.arch`` (name, num_classes, kwargs), which
    is exactly what a model directory's config.json stores to rebuild it.
    """
    _import_architectures()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ModelError(f"unknown model '{name}' ({hint}available: {', '.join(sorted(_MODELS))})")
    fn = _MODELS[name]
    accepted = inspect.signature(fn).parameters
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        valid = [p for p in accepted if p != "num_classes"]
        raise ModelError(f"model '{name}' has no argument '{unknown[0]}' (valid: {', '.join(valid)})")
    model = fn(num_classes=num_classes, **kwargs)
    model.arch = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}
    return model


def _import_architectures() -> None:
    from edgeseg.models import architectures  # noqa: F401  (registers on import)
