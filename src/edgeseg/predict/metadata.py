"""The facts an edgeseg ONNX file carries in its metadata_props: written by the export,
read by the predictors (and by the standalone bundle runner, which keeps its own copy)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx takes ~1 s to import; the predictors read metadata from ONNX Runtime's map
    import onnx


def set_metadata(model: onnx.ModelProto, facts: dict) -> None:
    """metadata_props: strings as they are, numbers and booleans as their JSON text, lists and
    maps as JSON; a None fact is left out."""
    del model.metadata_props[:]
    for key, value in facts.items():
        if value is None:
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)


def read_metadata(model_or_map) -> dict:
    """The facts ``set_metadata`` wrote (from a ModelProto or ONNX Runtime's custom map):
    JSON values decoded, any other text kept as the string it is. Older exports, which
    JSON-encoded every value (strings in quotes), read the same."""
    if not isinstance(model_or_map, dict):  # an onnx.ModelProto
        model_or_map = {entry.key: entry.value for entry in model_or_map.metadata_props}
    facts = {}
    for key, value in model_or_map.items():
        try:
            facts[key] = json.loads(value)
        except json.JSONDecodeError:  # a plain string
            facts[key] = value
    return facts
