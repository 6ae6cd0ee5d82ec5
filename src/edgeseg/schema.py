"""Config as validated data: strict pydantic models whose errors become one line."""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgeseg.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _known_keys(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (the path of an unknown key) inside ``model_cls``."""
    cls: Any = model_cls
    for part in loc[:-1]:
        fields = getattr(cls, "model_fields", None)
        if fields is None or not isinstance(part, str) or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(err: ValidationError, model_cls: type[BaseModel], source: str) -> str:
    """One line naming the first offending key, with a suggestion for a misspelt one."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains a missing key
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    if first["type"] == "extra_forbidden":
        known = _known_keys(model_cls, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (valid keys: {', '.join(known)})" if known else "")
        message = f"{source}: unknown key '{key}'{hint}"
    elif first["type"] == "missing":
        message = f"{source}: missing required key '{key}'"
    elif not loc:  # a check across keys: its message names them
        message = f"{source}: {first['msg'].removeprefix('Value error, ')}"
    else:
        message = f"{source}: bad value for '{key}': {first['msg'].removeprefix('Value error, ')}"
    more = len(errors) - 1
    return message + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def check_positive_sizes(arguments: dict[str, Any]) -> dict[str, Any]:
    """Model constructor arguments whose name says they are a size (``width``, ``widths``,
    ``*channels``, ``decoder``) must be positive numbers (0 would build an empty layer)."""
    for name, value in arguments.items():
        if not any(part in name for part in ("width", "channels", "decoder")):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not v > 0]
        if bad:
            raise ValueError(f"'{name}' must be positive (got {bad[0]})")
    return arguments


def validate(model_cls: type[M], data: Any, source: str) -> M:
    """Validate ``data`` against ``model_cls``; raise ConfigError with one line on failure."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model_cls, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely (no tags that build objects, no duplicate keys); a problem is a
    one-line ConfigError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where} invalid YAML ({problem})") from None
    except (RecursionError, ValueError, OverflowError) as err:  # absurd nesting or numbers
        raise ConfigError(f"{source}: invalid YAML ({type(err).__name__})") from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing, binary, empty or malformed file (or a key given twice) is a
    one-line ConfigError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected YAML") from None
    if "\0" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); expected YAML") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty (no keys); give the keys it should set, or leave it out")
    return data


def merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``; nested mappings merge, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(raw: str, item: str):
    """YAML scalar/flow value; '1e-4' is a number (PyYAML's YAML 1.1 reads it as a string)."""
    try:
        value = parse_yaml(raw, f"override '{item}'") if raw else ""
    except ConfigError:
        raise ConfigError(f"override '{item}': value is not valid YAML") from None
    if isinstance(value, str) and SCIENTIFIC.fullmatch(value):
        return float(value)
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. train.epochs=5")
        value = parse_value(raw, item)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (``Model``, ``Model | None``), if any."""
    for candidate in (annotation, *get_args(annotation)):
        # a parametrised generic such as dict[str, Any] passes isinstance(_, type) before Python 3.11
        if inspect.isclass(candidate) and get_origin(candidate) is None and issubclass(candidate, BaseModel):
            return candidate
    return None
