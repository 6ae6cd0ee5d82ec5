"""Staged pipelines: recipes, the runner, and the per-stage report."""

from edgeseg.pipeline.recipe import load_recipe
from edgeseg.pipeline.runner import run_pipeline

__all__ = ["load_recipe", "run_pipeline"]
