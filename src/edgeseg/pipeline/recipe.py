"""Recipes: the YAML that ``edgeseg run`` executes, validated completely before any work.

A recipe names its stages in order under ``stages:``, each a mapping whose kind is its
``stage:`` key or, when that is absent, its name::

    name: camvid-sparse
    train: {data: {spec: "camvid:../shared/data/camvid"}, epochs: 60}   # shared by training stages
    stages:
      dense: {stage: train}
      l1: {train: {epochs: 10, optimizer: {weight_decay: 1e-4}}}
      threshold: {fraction_mid: 0.8, per_channel: true}
      sparse: {train: {epochs: 20, optimizer: {lr: 1e-4}}}
      fold-bn: {}
      quantize: {quantization: {scheme: power-of-two}, train: {epochs: 3}}
      export: {format: bundle}

Training stages (train, l1, sparse) merge their ``train:`` mapping over the recipe's and
start from the previous stage's model; ``l1`` forces L1 regularisation and ``sparse``
freezes the zeros it starts with (the seed's WEIGHT_DISCONNECTED_ELTWISE). ``quantize``
calibrates (and with ``train:`` fine-tunes) a quantized model; ``export`` writes the ONNX
file or bundle and hands its input model on unchanged. ``prune`` removes (or with
``soft: true`` zeroes) the least important filters of every layer; a training stage after it
fine-tunes, and repeated prune + train stages prune iteratively. ``distill: {teacher:
"stage:NAME"}`` in a train section distils from the model the earlier stage NAME handed on.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import Field

from edgeseg.errors import ConfigError
from edgeseg.layout import STAGE_MODEL, STAGES_DIR
from edgeseg.pipeline.specs import QuantizeStage, Stage, TrainStage
from edgeseg.pipeline.stages import STAGES, finetune_config, finetune_section, stage_train_config
from edgeseg.schema import StrictModel, load_yaml, validate
from edgeseg.training.config import TrainConfig, apply_overrides


class ReportSection(StrictModel):
    split: str = Field("val", description="split every stage is evaluated on")
    size: tuple[int, int] | None = Field(None, description="latency input (H, W); default: the split's first image")
    latency_runs: int = Field(20, ge=1)
    device: str = Field("auto", description="where evaluation runs; latency is always measured on the CPU")
    max_class_drop: float = Field(
        0.05, ge=0, le=1, description="the class check: a stage whose IoU on some class fell more than this "
                                      "(a fraction: 0.05 = 5 points) below the first stage's is named in the "
                                      "log and the report")


class Recipe(StrictModel):
    name: str = "pipeline"
    out_dir: Path | None = Field(None, description="default: pipelines/<name>")
    start: str | None = Field(None, description="a model directory the first stage starts from")
    train: dict[str, Any] = Field(default_factory=dict, description="training config shared by training stages")
    report: ReportSection = Field(default_factory=ReportSection)
    stages: dict[str, dict[str, Any]]

    @property
    def directory(self) -> Path:
        return self.out_dir or Path("pipelines") / self.name


def stage_directory(recipe: Recipe, index: int, name: str) -> Path:
    """Where the stage at 1-based ``index`` keeps its work and its output."""
    return recipe.directory / STAGES_DIR / f"{index:02d}-{name}"


def resolve_teachers(recipe: Recipe, stages: dict[str, Stage], source: str) -> dict[str, Stage]:
    """``distill.teacher: stage:NAME`` in a stage's train section becomes the model that the
    earlier stage NAME hands on (distilling a compressed model from its own dense parent)."""
    resolved, earlier = {}, {}
    for index, (name, spec) in enumerate(stages.items(), 1):
        distill = (getattr(spec, "train", None) or {}).get("distill")
        teacher = distill.get("teacher") if isinstance(distill, dict) else None
        if isinstance(teacher, str) and teacher.startswith("stage:"):
            wanted = teacher.removeprefix("stage:")
            if wanted not in earlier:
                raise ConfigError(f"{source}: stages.{name}.train.distill.teacher: '{teacher}' names no earlier "
                                  f"stage that hands on a model (earlier: {', '.join(earlier) or 'none'})")
            train = {**spec.train, "distill": {**distill, "teacher": str(earlier[wanted])}}
            spec = spec.model_copy(update={"train": train})
        resolved[name] = spec
        if not STAGES[spec.stage].hands_on_source:
            earlier[name] = stage_directory(recipe, index, name) / STAGE_MODEL
    return resolved


def parse_stage(name: str, body: Any, source: str) -> Stage:
    """One stage mapping -> its validated spec (its kind from ``stage:`` or its name)."""
    where = f"{source}: stages.{name}"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of stage options")
    kind = body.get("stage", name)
    if kind not in STAGES:
        close = difflib.get_close_matches(str(kind), list(STAGES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{where}: unknown stage '{kind}' ({hint}stages: {', '.join(STAGES)}; "
                          f"a stage named otherwise needs 'stage: KIND')")
    return validate(STAGES[kind].spec, {**body, "stage": kind}, where)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, dict[str, Stage]]:
    """Read, override and validate a recipe and every stage in it, training configs included,
    so that a mistake anywhere fails before the first stage starts."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'stages' key")
    return check_recipe(apply_overrides(raw, list(overrides)), str(path))


def check_recipe(raw: dict, source: str) -> tuple[Recipe, dict[str, Stage]]:
    recipe = validate(Recipe, raw, source)
    validate(TrainConfig, recipe.train, f"{source}: train")
    if not recipe.stages:
        raise ConfigError(f"{source}: 'stages' is empty")
    stages = resolve_teachers(recipe, {name: parse_stage(name, body, source) for name, body in recipe.stages.items()},
                              source)
    first_name, first = next(iter(stages.items()))
    if recipe.start is None and STAGES[first.stage].needs_model:
        raise ConfigError(f"{source}: stages.{first_name}: a '{first.stage}' stage needs a model; "
                          f"begin with a training stage or set 'start: MODEL_DIR'")
    placeholder = recipe.start
    for name, spec in stages.items():
        if isinstance(spec, TrainStage):
            stage_train_config(recipe.train, spec, recipe.directory, placeholder, f"{source}: stages.{name}.train")
        if isinstance(spec, QuantizeStage) and spec.train is not None:
            finetune_config(finetune_section(recipe.train, spec), recipe.directory, recipe.directory,
                            f"{source}: stages.{name}.train")
        placeholder = str(recipe.directory)
    return recipe, stages
