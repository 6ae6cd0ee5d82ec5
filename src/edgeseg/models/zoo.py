"""The model zoo: every architecture registered, and models built from it by name."""

from __future__ import annotations

import difflib
import inspect

from torch import nn

from edgeseg.errors import ModelError
from edgeseg.models import architectures  # noqa: F401  (each architecture registers itself)
from edgeseg.models.registry import MODELS, TEST_ARGUMENTS


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(MODELS)


def tiny_variant_args(name: str) -> dict:
    """Arguments of ``name``'s variant small enough for architecture-wide tests ({}: its defaults)."""
    return dict(TEST_ARGUMENTS.get(name, {}))


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered architecture; a bad name or argument is a one-line ModelError.

    The model remembers how it was built in ``model.arch`` (name, num_classes, kwargs), which
    is exactly what a model directory's config.json stores to rebuild it.
    """
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ModelError(f"unknown model '{name}' ({hint}available: {', '.join(sorted(MODELS))})")
    fn = MODELS[name]
    accepted = inspect.signature(fn).parameters
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        valid = [p for p in accepted if p != "num_classes"]
        raise ModelError(f"model '{name}' has no argument '{unknown[0]}' (valid: {', '.join(valid)})")
    model = fn(num_classes=num_classes, **kwargs)
    model.arch = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}
    return model

