"""Real images for the checks and calibrations of compression stages."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeseg.data.spec import open_dataset
from edgeseg.data.transforms import EvalTransform
from edgeseg.models.model_dir import read_model_config


def real_check_images(model_dir: str | Path, data_spec: str | dict, split: str, count: int,
                      spread: bool = False) -> list[torch.Tensor]:
    """``count`` images of a dataset split, normalised as ``model_dir`` expects: the first
    ones, or with ``spread`` evenly spaced over the split (calibration sees its variety)."""
    return [image for image, _ in labelled_images(model_dir, data_spec, split, count, spread)]


def labelled_images(model_dir: str | Path, data_spec: str | dict, split: str, count: int,
                    spread: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised image, label map) pairs, as ``real_check_images`` chooses them."""
    config = read_model_config(model_dir)
    dataset = open_dataset(data_spec, split)
    dataset.transform = EvalTransform(config.mean, config.std)
    count = min(count, len(dataset))
    indices = range(count) if not spread else sorted({int(i * len(dataset) / count) for i in range(count)})
    return [dataset[i] for i in indices]
