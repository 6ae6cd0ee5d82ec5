"""Command-line options generated from a stage's schema, so that a setting's default and help
text live in one place (the pydantic field) for the recipe key and the command's flag."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any, Callable, List, Literal, Optional, Tuple

import typer
from pydantic import BaseModel

from edgeseg.schema import apply_overrides, merge

OVERRIDES_HELP = "dotted key=value settings (the same keys as in a recipe's stage)"


def _bare(annotation: Any) -> Any:
    """``int`` for ``Annotated[int, constraints]``."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _option_type(annotation: Any) -> Any | None:
    """The click-friendly type of a field, or None when it is no flag (a mapping, a list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in (bool, int, float, str):
        return annotation
    if typing.get_origin(annotation) is Literal:
        return str
    if typing.get_origin(annotation) is tuple and [_bare(a) for a in typing.get_args(annotation)] == [int, int]:
        return Tuple[int, int]
    return None


def schema_fields(model: type[BaseModel], flatten: dict[str, type[BaseModel]]) -> list[tuple[tuple[str, ...], Any]]:
    """(key path, field info) of every field that becomes a flag; ``flatten`` names nested
    sections whose fields become flags of their own."""
    fields = []
    for name, info in model.model_fields.items():
        if name == "stage":
            continue
        if name in flatten:
            fields += [((name, inner), inner_info) for inner, inner_info in flatten[name].model_fields.items()]
        else:
            fields.append(((name,), info))
    return [(path, info) for path, info in fields if _option_type(info.annotation) is not None]


def _default_text(info) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None:
        return ""
    if isinstance(default, tuple):
        default = " ".join(map(str, default))
    return f" (default: {str(default).lower() if isinstance(default, bool) else default})"


def schema_options(model: type[BaseModel], flatten: dict[str, type[BaseModel]] | None = None) -> Callable:
    """Decorate a typer command taking ``settings: dict``: every flaggable field of ``model``
    becomes an option (``--field-name``; booleans ``--name/--no-name``), plus trailing
    ``KEY=VALUE`` arguments for any key. The command receives the settings given, nested as
    the schema nests them (nothing given: {}), for the schema to validate and default."""
    fields = schema_fields(model, flatten or {})

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        kept = [p for p in signature.parameters.values() if p.name != "settings"]
        generated = [inspect.Parameter("overrides", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                       default=typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
                                       annotation=Optional[List[str]])]
        for path, info in fields:
            flag = path[-1].replace("_", "-")
            kind = _option_type(info.annotation)
            names = [f"--{flag}/--no-{flag}"] if kind is bool else [f"--{flag}"]
            help_text = (info.description or "") + _default_text(info)
            generated.append(inspect.Parameter(
                "_".join(path), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                default=typer.Option(None, *names, help=help_text, show_default=False)))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            settings = apply_overrides({}, list(kwargs.pop("overrides") or []))
            for path, _ in fields:
                value = kwargs.pop("_".join(path))
                if value is not None:
                    nested: dict = {path[-1]: list(value) if isinstance(value, tuple) else value}
                    for key in reversed(path[:-1]):
                        nested = {key: nested}
                    settings = merge(settings, nested)
            return command(**kwargs, settings=settings)

        positional = [p for p in kept if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept if p not in positional]
        wrapper.__signature__ = signature.replace(parameters=[*positional, generated[0], *keyword, *generated[1:]])
        return wrapper

    return decorate
