"""Staged pipelines: stage specs, the stage table, recipes, the runner and the report.

The names below load on first use, so that reading a stage's schema (``pipeline.specs``)
does not import the stages themselves."""

import importlib

_EXPORTS = {"load_recipe": "edgeseg.pipeline.recipe", "run_pipeline": "edgeseg.pipeline.runner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgeseg.pipeline' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
