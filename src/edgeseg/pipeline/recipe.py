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
file or bundle and hands its input model on unchanged.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgeseg import __version__
from edgeseg.compress.quant import QuantizeConfig
from edgeseg.compress.threshold import ThresholdConfig
from edgeseg.errors import ConfigError
from edgeseg.schema import StrictModel, load_yaml, merge, validate
from edgeseg.pipeline.quantize import FINETUNE_DEFAULTS, finetune_config
from edgeseg.train.config import TrainConfig, apply_overrides

TRAINING_KINDS = ("train", "l1", "sparse")
DEFAULT_KEEP = {"train": "best", "l1": "last", "sparse": "best"}


class TrainStage(StrictModel):
    stage: Literal["train", "l1", "sparse"]
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's train section")
    keep: Literal["best", "last"] | None = Field(
        None, description="the model the stage hands on: best val mIoU or the last epoch (default: best; l1: last)")

    @property
    def kept(self) -> str:
        return self.keep or DEFAULT_KEEP[self.stage]


class ThresholdStage(ThresholdConfig):
    stage: Literal["threshold"]

    def threshold_config(self) -> ThresholdConfig:
        return ThresholdConfig(**self.model_dump(exclude={"stage"}))


class FoldStage(StrictModel):
    stage: Literal["fold-bn"]
    check_images: int = Field(4, ge=1, description="val images the folded model is checked on")


class QuantizeStage(StrictModel):
    stage: Literal["quantize"]
    quantization: QuantizeConfig = Field(default_factory=QuantizeConfig)
    train: dict[str, Any] | None = Field(
        None, description="quantization-aware fine-tuning: overrides of the recipe's train section over "
                          "5 epochs at lr 1e-5 (absent: calibration only)")


class ExportStage(StrictModel):
    stage: Literal["export"]
    format: Literal["onnx", "onnx-int8", "bundle"] | None = Field(
        None, description="default: onnx-int8 for a quantized model, else onnx")
    size: tuple[int, int] | None = Field(None, description="fixed input (H, W); default: the report's size")
    check_images: int = Field(8, ge=1, description="val images the export is checked on")
    min_agreement: float = Field(0.98, gt=0, le=1, description="int8: least pixel agreement with PyTorch")


STAGE_TYPES: dict[str, type[StrictModel]] = {
    "train": TrainStage, "l1": TrainStage, "sparse": TrainStage, "threshold": ThresholdStage, "fold-bn": FoldStage,
    "quantize": QuantizeStage, "export": ExportStage}
PLANNED_KINDS = ("prune",)
Stage = TrainStage | ThresholdStage | FoldStage | QuantizeStage | ExportStage


class ReportSection(StrictModel):
    split: str = Field("val", description="split every stage is evaluated on")
    size: tuple[int, int] | None = Field(None, description="latency input (H, W); default: the split's first image")
    latency_runs: int = Field(20, ge=1)
    device: str = Field("auto", description="where evaluation runs; latency is always measured on the CPU")


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


def parse_stage(name: str, body: Any, source: str) -> Stage:
    """One stage mapping -> its validated spec (its kind from ``stage:`` or its name)."""
    where = f"{source}: stages.{name}"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of stage options")
    kind = body.get("stage", name)
    if kind in PLANNED_KINDS:
        raise ConfigError(f"{where}: stage '{kind}' is not available in edgeseg {__version__} "
                          f"(stages: {', '.join(STAGE_TYPES)})")
    if kind not in STAGE_TYPES:
        close = difflib.get_close_matches(str(kind), list(STAGE_TYPES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{where}: unknown stage '{kind}' ({hint}stages: {', '.join(STAGE_TYPES)}; "
                          f"a stage named otherwise needs 'stage: KIND')")
    return validate(STAGE_TYPES[kind], {**body, "stage": kind}, where)


def stage_train_config(recipe: Recipe, name: str, spec: TrainStage, stage_dir: Path,
                       init_from: str | None, source: str = "recipe") -> TrainConfig:
    """The full training config of a training stage, validated."""
    data = merge(recipe.train, spec.train)
    data.update(name="run", runs_dir=str(stage_dir))
    if init_from is not None:
        data["model"] = {**data.get("model", {}), "init_from": init_from}
    if spec.stage == "l1":
        data["optimizer"] = {**data.get("optimizer", {}), "regularization": "l1"}
    if spec.stage == "sparse":
        data["sparsity"] = {**data.get("sparsity", {}), "sparse": True}
    return validate(TrainConfig, data, f"{source}: stages.{name}.train")


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
    stages = {name: parse_stage(name, body, source) for name, body in recipe.stages.items()}
    first_name, first = next(iter(stages.items()))
    if recipe.start is None and first.stage not in TRAINING_KINDS:
        raise ConfigError(f"{source}: stages.{first_name}: a '{first.stage}' stage needs a model; "
                          f"begin with a training stage or set 'start: MODEL_DIR'")
    placeholder = recipe.start
    for name, spec in stages.items():
        if isinstance(spec, TrainStage):
            stage_train_config(recipe, name, spec, recipe.directory, placeholder, source)
        if isinstance(spec, QuantizeStage) and spec.train is not None:
            finetune_config(finetune_section(recipe, spec), recipe.directory, recipe.directory,
                            f"{source}: stages.{name}.train")
        placeholder = str(recipe.directory)
    return recipe, stages


def finetune_section(recipe: Recipe, spec: QuantizeStage) -> dict:
    """A quantize stage's fine-tuning keys: the recipe's train section, then the fine-tuning
    defaults (epochs, lr), then the stage's own train section."""
    return merge(merge(recipe.train, FINETUNE_DEFAULTS), spec.train or {})
