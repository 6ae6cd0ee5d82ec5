"""``edgeseg init``: Blueoil-style questions turned into a validated training config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeseg.data.spec import FORMATS
from edgeseg.models.stride import fits_stride, round_up
from edgeseg.models.zoo import create_model, list_models
from edgeseg.training.config import TrainConfig
from edgeseg.schema import validate

SCHEDULES = ["poly", "cosine", "constant", "step", "multistep", "2-step-decay", "3-step-decay"]
AUGMENTATIONS = ["flip", "scale", "color"]


@dataclass
class Question:
    key: str
    text: str
    default: str
    choices: list[str] = field(default_factory=list)


def questions() -> list[Question]:
    return [
        Question("name", "experiment name", "experiment"),
        Question("format", "dataset format", "camvid", list(FORMATS)),
        Question("path", "dataset path (or image count for synthetic)", "../shared/data/camvid"),
        Question("val_fraction", "validation fraction when the dataset has no val split", "0.1"),
        Question("model", "network", "jacintonet11_seg", list_models()),
        Question("crop", "training crop 'HEIGHT WIDTH'", "240 320"),
        Question("batch_size", "batch size", "8"),
        Question("epochs", "epochs", "60"),
        Question("optimizer", "optimizer", "adam", ["sgd", "adam", "adamw"]),
        Question("lr", "initial learning rate", "0.001"),
        Question("schedule", "learning-rate schedule", "poly", SCHEDULES),
        Question("augment", "augmentations, comma separated", "flip,scale,color"),
    ]


def build_config(answers: dict[str, str]) -> dict:
    """The training config (as a dict, already validated) for a set of answers."""
    fmt = answers["format"]
    if fmt != "synthetic" and not Path(answers["path"]).expanduser().exists():
        raise ValueError(f"dataset path {answers['path']}: not found")
    val_fraction = float(answers["val_fraction"])
    if fmt == "synthetic":
        spec: str | dict = f"synthetic:{answers['path']}" if answers["path"].isdigit() else "synthetic"
    elif val_fraction != 0.1:
        spec = {"format": fmt, "root": answers["path"], "val_fraction": val_fraction}
    else:
        spec = f"{fmt}:{answers['path']}"
    try:
        height, width = (int(v) for v in answers["crop"].replace("x", " ").split())
    except ValueError:
        raise ValueError(f"crop '{answers['crop']}': expected 'HEIGHT WIDTH', e.g. '240 320'") from None
    stride = create_model(answers["model"], 2).output_stride
    if not fits_stride((height, width), stride):
        fitted = round_up((height, width), stride)
        raise ValueError(f"crop {height}x{width}: '{answers['model']}' needs multiples of its output stride {stride} "
                         f"(e.g. {fitted[0]} {fitted[1]})")
    wanted = {a.strip() for a in answers["augment"].split(",") if a.strip()}
    unknown = wanted - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation '{sorted(unknown)[0]}' (valid: {', '.join(AUGMENTATIONS)})")
    augment: dict = {"crop": [height, width], "hflip": 0.5 if "flip" in wanted else 0.0}
    if "scale" in wanted:
        augment["scale"] = {"prob": 1.0, "min": 0.75, "max": 1.5}
    if "color" in wanted:
        augment["color_jitter"] = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}
    config = {
        "name": answers["name"],
        "data": {"spec": spec},
        "model": {"name": answers["model"], "args": {}},
        "augment": augment,
        "optimizer": {"name": answers["optimizer"], "lr": float(answers["lr"])},
        "schedule": {"name": answers["schedule"]},
        "epochs": int(answers["epochs"]),
        "batch_size": int(answers["batch_size"]),
    }
    validate(TrainConfig, config, "edgeseg init")
    return config


def ask_all(given: dict[str, str | None], ask: Callable[[Question], str]) -> dict[str, str]:
    """Answers for every question: those given, and ``ask(question)`` for the rest."""
    return {q.key: given[q.key] if given.get(q.key) is not None else ask(q) for q in questions()}
