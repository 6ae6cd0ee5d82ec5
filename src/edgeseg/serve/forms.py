"""The New Model form and pasted YAML, validated by the schema the CLI uses (TrainConfig,
the recipe schema); errors are mapped back to the form field they concern."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.pipeline.recipe import check_recipe
from edgeseg.schema import apply_overrides, format_validation_error
from edgeseg.serve.paths import PathGuard
from edgeseg.training.config import TrainConfig

# form field -> the config key it sets
FIELD_KEYS = {
    "name": "name", "architecture": "model.name", "width": "model.args.width", "epochs": "epochs",
    "lr": "optimizer.lr", "batch_size": "batch_size", "crop": "augment.crop", "optimizer": "optimizer.name",
    "schedule": "schedule.name", "class_weights": "loss.class_weights", "num_workers": "data.num_workers",
}
KEY_FIELDS = {key: field for field, key in FIELD_KEYS.items()}
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("poly", "cosine", "constant", "step", "multistep", "2-step-decay", "3-step-decay")
CLASS_WEIGHTS = ("none", "median_frequency", "enet")


def form_defaults() -> dict[str, str]:
    config = TrainConfig()
    crop = config.augment.crop or (192, 256)
    return {"name": "model", "architecture": config.model.name, "width": "", "epochs": str(config.epochs),
            "lr": str(config.optimizer.lr), "batch_size": str(config.batch_size), "crop": f"{crop[0]} {crop[1]}",
            "optimizer": config.optimizer.name, "schedule": config.schedule.name,
            "class_weights": config.loss.class_weights, "num_workers": str(config.data.num_workers), "yaml": ""}


def _number(text: str) -> Any:
    """A form value as YAML reads it (so '1e-3' is a float and 'abc' stays text for the schema to refuse)."""
    text = text.strip()
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text


def config_from_form(form: dict[str, str], data_spec: str | None) -> dict:
    """The training config mapping the form describes (not yet validated)."""
    data: dict = {}
    if form.get("yaml", "").strip():
        try:
            pasted = yaml.safe_load(form["yaml"])
        except yaml.YAMLError as err:
            raise FormErrors({"yaml": f"not valid YAML: {str(err).splitlines()[0]}"}) from None
        if not isinstance(pasted, dict):
            raise FormErrors({"yaml": "expected a mapping of config keys"})
        data = pasted
    overrides = []
    for field, key in FIELD_KEYS.items():
        value = form.get(field, "").strip()
        if not value or (data and _is_default(field, value)):
            continue
        if field == "crop":
            parts = value.replace(",", " ").replace("x", " ").split()
            overrides.append(f"{key}=[{', '.join(parts)}]")
        else:
            overrides.append(f"{key}={value}")
    if data_spec:
        overrides.append(f"data.spec={data_spec}")
    try:
        return apply_overrides(data, overrides)
    except ConfigError as err:
        raise FormErrors({"yaml": str(err)}) from None


def _is_default(field: str, value: str) -> bool:
    """With a pasted YAML, form fields left at their defaults do not override it."""
    return form_defaults().get(field) == value


class FormErrors(ConfigError):
    """Errors by form field ('' for the form as a whole)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k or 'form'}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_train(data: dict, guard: PathGuard, check_spec) -> TrainConfig:
    """TrainConfig.model_validate, as ``edgeseg train`` does, with errors by field; the
    data spec and any model paths are checked against the server's roots."""
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as err:
        errors: dict[str, str] = {}
        for item in err.errors():
            key = ".".join(str(p) for p in item["loc"])
            field = KEY_FIELDS.get(key) or next((f for k, f in KEY_FIELDS.items() if key.startswith(k + ".")), "yaml")
            message = item["msg"].removeprefix("Value error, ")
            errors.setdefault(field, f"{key}: {message}" if field == "yaml" else message)
        errors.setdefault("", format_validation_error(err, TrainConfig, "model"))
        raise FormErrors(errors) from None
    try:
        if isinstance(config.data.spec, str):
            config.data.spec = check_spec(config.data.spec)
        else:
            raise ConfigError("data.spec: give a dataset spec string or choose a dataset (mappings are not taken here)")
        for key in ("pretrained", "init_from"):
            value = getattr(config.model, key)
            if value and "://" not in value:
                guard.resolve(value, f"model.{key}")
            elif value:
                raise ConfigError(f"model.{key}: the server does not download (no URLs); give a local path")
    except EdgesegError as err:
        raise FormErrors({"yaml": str(err)}) from None
    return config


def validate_recipe(text: str, guard: PathGuard, check_spec) -> dict:
    """A pasted recipe, checked by the recipe schema (every stage, training configs included)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise FormErrors({"recipe": f"not valid YAML: {str(err).splitlines()[0]}"}) from None
    if not isinstance(raw, dict):
        raise FormErrors({"recipe": "expected a mapping with 'train' and 'stages'"})
    try:
        recipe, _ = check_recipe(raw, "recipe")
        data = recipe.train.get("data") or {}
        if isinstance(data.get("spec"), str):
            data["spec"] = check_spec(data["spec"])
            raw["train"] = {**recipe.train, "data": data}
        if recipe.start:
            guard.resolve(str(recipe.start), "start")
    except EdgesegError as err:
        raise FormErrors({"recipe": str(err)}) from None
    return raw
