"""The training config: YAML validated by this schema; ``key=value`` overrides on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from edgeseg.compress.sparsity import SparsityConfig
from edgeseg.data.spec import DatasetConfig
from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from edgeseg.errors import ConfigError
from edgeseg.layout import RUN_CONFIG
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.schema import (StrictModel, apply_overrides, check_positive_sizes, load_yaml, model_in,  # noqa: F401
                            parse_value, validate)


class ModelSection(StrictModel):
    name: str = "basic_encdec"
    args: dict[str, Any] = Field(default_factory=dict, description="constructor arguments, e.g. width")
    pretrained: str | None = Field(None, description="a local .safetensors file, a model dir, or an explicit URL")
    init_from: str | None = Field(
        None, description="a model directory to continue from: its architecture, arguments and weights (name and args are then ignored)")

    _positive_sizes = field_validator("args")(check_positive_sizes)


class OptimizerSection(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0, description="strength of the regularization")
    regularization: Literal["l2", "l1"] = Field(
        "l2", description="l1: proximal shrink of conv weights by lr x weight_decay (exact zeros), no L2")
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSection(StrictModel):
    name: Literal["constant", "poly", "cosine", "step", "multistep", "2-step-decay", "3-step-decay"] = "poly"
    power: float = Field(0.9, gt=0, description="poly exponent")
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs of decay")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup from warmup_start x lr")
    warmup_start: float = Field(0.1, ge=0, le=1)


class LossSection(StrictModel):
    class_weights: Literal["none", "median_frequency", "enet"] = "none"
    class_weight_power: float = Field(1.0, ge=0, description="weights ** power; 0.5 softens them")
    ohem_threshold: float | None = Field(
        None, gt=0, le=1, description="train on hard pixels only: true-class probability below this (OHEM; 0.7 is usual)")
    ohem_min_kept: float = Field(1 / 16, gt=0, le=1, description="OHEM: at least this fraction of labelled pixels")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="targets (1 - e) on the true class + e / classes everywhere (0.1 is usual)")
    head_weights: dict[str, float] | None = Field(
        None, description="loss weight per output head of a multi-head model (e.g. icnet: main, sub24, sub4; "
                          "pspnet: main, aux); default: the architecture's (ICNet 1.0 / 0.4 / 0.4)")

    @field_validator("head_weights")
    @classmethod
    def _non_negative(cls, value):
        if value is not None and any(weight < 0 for weight in value.values()):
            raise ValueError("head weights must be >= 0")
        return value


class DistillSection(StrictModel):
    """Knowledge distillation: the student also matches a frozen teacher's softened
    per-pixel class distribution (KL divergence, Hinton et al.)."""

    teacher: str = Field(description="a model directory with the same classes (run in eval mode, never trained)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature T of both; the KL term is scaled by T^2")
    weight: float = Field(1.0, ge=0, description="loss = cross-entropy + weight x T^2 x KL over labelled pixels")


class DataSection(StrictModel):
    spec: str | DatasetConfig = Field("synthetic", description="a dataset spec string or a dataset mapping")
    train_split: str = Field("train", description="the split trained on; train+val joins splits (a final model "
                                                   "on every labelled image: val then measures trained images)")
    val_split: str = "val"
    cache: bool = Field(True, description="keep decoded images in memory")
    num_workers: int = Field(2, ge=0)
    mean: tuple[float, float, float] | None = Field(
        None, description="inputs are (pixel / 255 - mean) / std; unset: model.init_from's, else the architecture's "
                          f"own (fcn_alexnet: pixel - 116), else ImageNet's {IMAGENET_MEAN}")
    std: tuple[float, float, float] | None = Field(None, description=f"unset: as mean (ImageNet's {IMAGENET_STD})")


class TrainConfig(StrictModel):
    """Everything a run needs; the resolved copy saved in the run directory reproduces it."""

    name: str = "run"
    runs_dir: Path = Path("runs")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(crop=(192, 256)))
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    loss: LossSection = Field(default_factory=LossSection)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    quantize: QuantizeConfig | None = Field(
        None, description="train with quantizers from the first step: {scheme: low-bit} is Blueoil's 1-bit "
                          "weights / 2-bit activations (int8 schemes calibrate first: edgeseg quantize)")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1, description="per process")
    eval_every: int = Field(1, ge=1, description="epochs between full-resolution evaluations")
    clip_grad_norm: float | None = Field(None, gt=0)
    distill: DistillSection | None = Field(None, description="learn from a teacher model too: {teacher: MODEL_DIR, "
                                                                   "temperature: T, weight: w}")
    memory_saving: bool | list[str] = Field(
        False, description="gradient checkpointing: true checkpoints the architecture's default modules, or a list "
                           "of module names, and the loss's full-resolution logits; less activation memory for "
                           "part of one more forward per step")
    save_every: int | None = Field(
        None, ge=1, description="epochs between kept model directories in checkpoints/ (for edgeseg eval --watch)")
    keep_last: int = Field(5, ge=1, description="how many of those periodic checkpoints to keep")
    weight_average: float | None = Field(
        None, gt=0, lt=1, description="evaluate and save an exponential moving average of the weights with this decay (e.g. 0.999)")
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = Field(True, description="mixed precision on CUDA: float16 autocast with loss scaling")
    cpu_amp: bool | Literal["auto"] = Field(
        False, description="bfloat16 autocast on the CPU (fast where the CPU has AMX or AVX-512 BF16, emulated and "
                           "about 10x slower elsewhere; auto: on only where the CPU has them; weights stay float32)")
    channels_last: bool | None = Field(
        None, description="channels-last memory format; unset: on with CUDA, off on the CPU (where it helps some models)")
    tensorboard: bool = True
    log_every: int = Field(20, ge=1, description="steps between TensorBoard loss/lr points")
    history: list[dict[str, Any]] = Field(
        default_factory=list, description="written by edgeseg: divergence stops and keys changed on --resume")

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, value: str) -> str:
        if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
            raise ValueError(f"must be a plain folder name under runs_dir (no '/' or '..'), got '{value}'")
        return value

    @field_validator("cpu_amp", mode="before")
    @classmethod
    def _cpu_amp_choice(cls, value):
        if value is True or value is False or value == "auto":
            return value
        raise ValueError(f"use true, false or auto (got {value!r})")

    @model_validator(mode="after")
    def _phases_end_before_training_does(self):
        phase_epochs = sum(phase.epochs for phase in self.augment.phases)
        if phase_epochs >= self.epochs:
            raise ValueError(f"augment.phases: they last {phase_epochs} epochs, but training has only "
                             f"{self.epochs}; the last epochs must use augment.scale and augment.crop")
        return self

    @model_validator(mode="after")
    def _average_keeps_the_weights_constraints(self):
        if self.weight_average is not None and (self.sparsity.active or self.quantize is not None):
            raise ValueError("weight_average: an average of the weights would not keep the sparsity or "
                             "quantization they are trained under; leave it unset with those")
        return self


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data = {}
    source = "defaults"
    if path is not None:
        data = load_yaml(path) or {}
        source = str(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
    return validate(TrainConfig, apply_overrides(data, list(overrides)), source)


def defaults_yaml() -> str:
    """The default config as YAML, each key commented with its description."""
    lines = ["# edgeseg training defaults: every key, its default and what it means.",
             "# A config file only needs the keys it changes; unknown keys are errors.", ""]

    def walk(model_cls, values: dict, indent: str) -> None:
        for name, info in model_cls.model_fields.items():
            value = values[name]
            comment = f"  # {info.description}" if info.description else ""
            sub = model_in(info.annotation)
            if sub is not None and isinstance(value, dict):
                lines.append(f"{indent}{name}:{comment}")
                walk(sub, value, indent + "  ")
            else:
                rendered = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
                rendered = rendered[:-4].rstrip() if rendered.endswith("\n...") else rendered
                lines.append(f"{indent}{name}: {rendered}{comment}")

    walk(TrainConfig, TrainConfig().model_dump(mode="json"), "")
    return "\n".join(lines) + "\n"


# Keys a resumed run may change: they cannot change what it computes.
RESUME_FREE_KEYS = ("name", "runs_dir", "device", "tensorboard", "log_every", "data.num_workers", "data.cache",
                    "sparsity.display_sparsity", "memory_saving", "save_every", "keep_last")
# Keys a run stopped by divergence may also change when resumed: the remedies.
RESUME_AFTER_DIVERGENCE_KEYS = ("optimizer.lr", "schedule.", "clip_grad_norm")


def resume_config(run_dir: Path, path: str | Path | None, overrides: list[str] = (),
                  requested: TrainConfig | None = None) -> TrainConfig:
    """The config that continues ``run_dir``: ``requested``, or ``path`` (default: the run's
    config.yaml) with ``overrides``, compared with the run's config.yaml. Only keys that cannot change what the run computes may differ
    (``RESUME_FREE_KEYS``; after a divergence stop also the lr, schedule and gradient
    clipping); anything else is a ConfigError naming the keys. Changes are appended to
    ``history`` with the epoch they start from."""
    from edgeseg.training.checkpoint import saved_progress  # imports torch: not for every config load

    saved_file = Path(run_dir) / RUN_CONFIG
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: run directory not found")
    if not saved_file.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    saved = load_train_config(saved_file)
    if requested is None:
        requested = load_train_config(path if path is not None else saved_file, overrides)
    old, new = _flat(saved.model_dump(mode="json")), _flat(requested.model_dump(mode="json"))
    changed = [k for k in sorted(set(old) | set(new)) if k != "history" and old.get(k) != new.get(k)]
    diverged = bool(saved.history) and "diverged" in saved.history[-1]
    free = RESUME_FREE_KEYS + (RESUME_AFTER_DIVERGENCE_KEYS if diverged else ())
    refused = [k for k in changed if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in free)]
    if refused:
        hint = ("" if diverged else "; after a divergence stop the lr, schedule and clip_grad_norm may change")
        raise ConfigError(f"{run_dir}: --resume cannot change what the run computes ({', '.join(refused)} differ "
                          f"from its config.yaml); start a new run to change them{hint}")
    history = list(saved.history)
    if changed:
        epoch = saved_progress(Path(run_dir))["epoch"]
        history.append({"resumed_after_epoch": epoch, "changed": {k: [old.get(k), new.get(k)] for k in changed}})
    return requested.model_copy(update={"history": history})


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "args":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
