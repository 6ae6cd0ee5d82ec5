"""Model directories: ``config.json`` (everything needed to rebuild and use the model) plus
``model.safetensors``. Loading constructs from config and loads weights strictly; nothing
in the directory is ever executed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgeseg import __version__
from edgeseg.data.classes import ClassInfo
from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.errors import ConfigError, ModelError
from edgeseg.fileio import atomic_replace_dir
from edgeseg.layout import CONFIG_NAME, WEIGHTS_NAME
from edgeseg.models.folded import strip_batchnorm
from edgeseg.models.pruned import apply_widths, conv_widths
from edgeseg.models.quant_spec import QuantizationRecord
from edgeseg.models.quantized import attach_record
from edgeseg.models.zoo import create_model
from edgeseg.schema import StrictModel, check_positive_sizes, validate

FORMAT_VERSION = 1


class HistoryEntry(BaseModel):
    """One stage applied to the model: its kind, the dataset it trained on (if any) and what
    the stage measured (stage-specific keys, kept as written)."""

    model_config = ConfigDict(extra="allow")

    stage: str = Field(min_length=1)
    data: str | dict[str, Any] | None = Field(None, description="the dataset: a spec string or a dataset mapping")


class ModelConfig(StrictModel):
    """The schema of a model directory's config.json."""

    format_version: int = Field(1, ge=1)
    architecture: str
    num_classes: int = Field(ge=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    classes: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = 255
    mean: tuple[float, float, float]
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    input_channels: Literal["rgb", "gray"] = Field(
        "rgb", description="gray: trained on luminance copied to 3 channels (dataset channels: gray); "
                           "predictors turn colour input grey the same way")
    input_size: tuple[PositiveInt, PositiveInt] = Field(description="(height, width) the model is meant to run at")
    output_stride: int = Field(1, ge=1)
    batchnorm_folded: bool = Field(False, description="BatchNorms merged into convs (edgeseg fold-bn)")
    auxiliary_heads: bool = Field(True, description="the architecture's training-only heads (PSPNet's, ICNet's "
                                  "cascade guidance) are present; false once quantization removed them")
    widths: dict[str, int] = Field(default_factory=dict, description="conv name -> output channels, for every conv "
                                   "filter pruning narrowed (edgeseg prune); applied over the architecture's arguments")
    history: list[HistoryEntry] = Field(default_factory=list, description="stages applied, oldest first")
    quantization: QuantizationRecord | None = Field(None, description="how and where the model is quantized")
    edgeseg_version: str = __version__

    _positive_sizes = field_validator("arguments")(check_positive_sizes)

    @field_validator("format_version")
    @classmethod
    def _readable_version(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(f"format {value} is newer than this edgeseg reads ({FORMAT_VERSION}); upgrade edgeseg")
        return value

    def class_info(self) -> ClassInfo:
        return ClassInfo(tuple(self.classes), tuple(self.palette), self.ignore_index)

    def trained_on(self) -> str | dict[str, Any] | None:
        """The dataset spec of the latest training stage that recorded one."""
        return next((entry.data for entry in reversed(self.history) if entry.data), None)

    def with_stage(self, metrics: dict[str, Any], **changes: Any) -> "ModelConfig":
        """A copy with ``metrics`` (which name their ``stage``) appended to the history and
        ``changes`` applied, validated."""
        data = self.model_dump(mode="json")
        data.update(changes)
        data["history"] = [*data["history"], metrics]
        return ModelConfig.model_validate(data)


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    path: Path


def model_config_for(model: nn.Module, classes: ClassInfo, input_size: tuple[int, int],
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, history: list | None = None,
                     input_channels: str = "rgb") -> ModelConfig:
    """The config.json content for a model built by ``create_model``."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise ModelError("model was not built with create_model(); its architecture is unknown")
    if arch["num_classes"] != classes.num_classes:
        raise ModelError(f"model has {arch['num_classes']} classes but the dataset has {classes.num_classes}")
    return ModelConfig(
        architecture=arch["name"], num_classes=arch["num_classes"], arguments=arch["kwargs"],
        classes=list(classes.names), palette=[tuple(c) for c in classes.palette],
        ignore_index=classes.ignore_index, mean=tuple(mean), std=tuple(std), input_channels=input_channels,
        input_size=tuple(input_size), output_stride=getattr(model, "output_stride", 1),
        widths=dict(getattr(model, "widths", None) or {}), history=list(history or []),
        auxiliary_heads=not getattr(model, "auxiliary_dropped", False))


def drop_auxiliary_heads(model: nn.Module, config: ModelConfig) -> ModelConfig:
    """Remove ``model``'s training-only heads (a model about to be quantized or deployed needs
    none); returns ``config`` recording it, without widths of the convs that went."""
    if not getattr(model, "has_auxiliary_heads", False):
        return config
    model.drop_auxiliary_heads()
    remaining = conv_widths(model)
    widths = {name: width for name, width in config.widths.items() if name in remaining}
    return config.model_copy(update={"auxiliary_heads": False, "widths": widths})


def without_subnormals(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with subnormal floats (0 < |x| < the smallest normal) set to zero.

    They compute as zero to float precision, but x86 CPUs take a slow path on them: a sparse
    CamVid model whose dead channels had drifted there ran 3x slower (84 vs 28 ms), with
    bit-identical logits once they were zeroed.
    """
    if not tensor.is_floating_point():
        return tensor
    return torch.where(tensor.abs() < torch.finfo(tensor.dtype).tiny, torch.zeros_like(tensor), tensor)


@torch.no_grad()
def flush_subnormals_(model: nn.Module) -> None:
    """Zero the subnormal entries of every parameter and buffer of ``model`` in place."""
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.copy_(without_subnormals(tensor))


def save_model_dir(model: nn.Module, config: ModelConfig, path: str | Path,
                   extra_files: dict[str, str] | None = None) -> Path:
    """Write config.json + model.safetensors (+ ``extra_files``, name -> text) atomically: an
    existing directory is replaced only once the new one is complete. Subnormal weights are
    stored as zeros; weights holding NaN or infinities are refused (ModelError)."""
    state = {k: without_subnormals(v.detach().cpu()).contiguous() for k, v in model.state_dict().items()}
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ModelError(f"{path}: not written: weight '{bad}' holds NaN or infinite values")

    def build(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return atomic_replace_dir(build, path)


def read_model_config(path: str | Path) -> ModelConfig:
    """Validate a model directory's config.json (one-line error naming the file or key)."""
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not path.is_dir():
        raise ModelError(f"{path}: model directory not found")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{config_file}: file not found (not a model directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{config_file}: invalid JSON ({err})") from None
    try:
        return validate(ModelConfig, data, str(config_file))
    except ConfigError as err:
        raise ModelError(str(err)) from None


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from config.json and load its weights strictly."""
    path = Path(path)
    config = read_model_config(path)
    model = create_model(config.architecture, config.num_classes, **config.arguments)
    if not config.auxiliary_heads and getattr(model, "has_auxiliary_heads", False):
        model.drop_auxiliary_heads()
    if config.widths:
        try:
            apply_widths(model, config.widths)
        except ModelError as err:
            raise ModelError(f"{path / CONFIG_NAME}: {err}") from None
    if config.batchnorm_folded:
        strip_batchnorm(model)
    if config.quantization is not None:
        try:
            attach_record(model, config.quantization)
        except ValueError as err:
            raise ModelError(f"{path / CONFIG_NAME}: quantization: {err}") from None
    weights = path / WEIGHTS_NAME
    try:
        state = load_file(str(weights), device="cpu")
    except FileNotFoundError:
        raise ModelError(f"{weights}: file not found") from None
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{weights}: unreadable weights ({err})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key, kind = (missing[0], "missing") if missing else (unexpected[0], "unexpected")
        raise ModelError(f"{weights}: weights do not fit '{config.architecture}' ({kind} tensor '{key}')")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ModelError(f"{weights}: weights do not fit '{config.architecture}' (tensor '{key}' has shape "
                             f"{tuple(state[key].shape)}, the model expects {tuple(tensor.shape)})")
    model.load_state_dict(state, strict=True)
    return LoadedModel(model.to(device).eval(), config, path)
