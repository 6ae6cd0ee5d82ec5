"""The Python API for notebooks and scripts::

    from edgeseg import Segmenter
    seg = Segmenter("runs/camvid/best")          # a model directory, an .onnx file or a bundle
    labels = seg.predict(image)                  # numpy (H, W, 3) RGB uint8, a PIL image or a path
    picture = seg.overlay(image, labels)

    run = edgeseg.train("configs/camvid-cpu.yaml", epochs=5, optimizer__lr=0.01)
    metrics = edgeseg.evaluate(run.run_dir / "best", "camvid:../shared/data/camvid")

The same code as the command line runs underneath: ``Segmenter`` is the predictor ``edgeseg
predict`` uses, ``train`` the engine ``edgeseg train`` runs, ``evaluate`` the evaluation
``edgeseg eval`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from edgeseg.data.imageio import read_image
from edgeseg.data.spec import open_dataset
from edgeseg.errors import DataError
from edgeseg.evaluation import evaluate as evaluate_predictor
from edgeseg.predict.predictors import label_map, load_predictor
from edgeseg.predict.outputs import overlay as overlay_labels
from edgeseg.runtime import resolve_device
from edgeseg.schema import load_yaml, merge, validate
from edgeseg.training.config import TrainConfig
from edgeseg.training.loop import RunResult
from edgeseg.training.loop import train as train_run


class Segmenter:
    """A trained or exported model that labels images.

    ``model``: a model directory, an ``.onnx`` file or a deploy bundle; ``device``: auto,
    cpu, cuda or cuda:N (ONNX models always run on the CPU)."""

    def __init__(self, model: str | Path, device: str = "auto") -> None:
        self.path = Path(model)
        self.predictor = load_predictor(self.path, resolve_device(device))
        self.classes: list[str] = list(self.predictor.classes.names)
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in self.predictor.classes.palette]

    def __repr__(self) -> str:
        return f"Segmenter({str(self.path)!r}, {self.predictor.backend}, {len(self.classes)} classes)"

    def predict(self, image: Any) -> np.ndarray:
        """(H, W) uint8 class ids for ``image``: an (H, W, 3) RGB uint8 array, an (H, W)
        grey array, a PIL image (EXIF orientation applied) or an image file path."""
        return label_map(self.predictor, as_rgb_array(image))

    def overlay(self, image: Any, labels: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The image with its class colours blended in (``labels`` predicted when omitted),
        as an (H, W, 3) uint8 RGB array."""
        rgb = as_rgb_array(image)
        labels = self.predict(rgb) if labels is None else np.asarray(labels)
        if labels.shape != rgb.shape[:2]:
            raise DataError(f"labels {labels.shape} do not match the image {rgb.shape[:2]}")
        return overlay_labels(rgb, labels, self.predictor.classes, alpha)


def as_rgb_array(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from an array, a PIL image or a path (one-line DataError
    for anything else)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise DataError(f"expected an (H, W, 3) RGB image array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise DataError(f"expected a uint8 image array (0..255), got {image.dtype}")
        return image[..., :3]
    raise DataError(f"cannot read an image from a {type(image).__name__}; give a numpy array, a PIL image or a path")


def train(config: str | Path | dict | None = None, **overrides: Any) -> RunResult:
    """Train as ``edgeseg train`` does; returns the run (``run_dir``, ``best_miou``).

    ``config``: a YAML file, a mapping of config keys, or None for the defaults. Keyword
    overrides use ``__`` for nesting (``optimizer__lr=0.01``) or take a mapping that merges
    into its section (``optimizer={"lr": 0.01}``)."""
    data = dict(load_yaml(config) or {}) if isinstance(config, (str, Path)) else dict(config or {})
    for key, value in overrides.items():
        nested: Any = value
        for part in reversed(key.split("__")):
            nested = {part: nested}
        data = merge(data, nested)
    source = str(config) if isinstance(config, (str, Path)) else "edgeseg.train()"
    return train_run(validate(TrainConfig, data, source))


def evaluate(model: str | Path | Segmenter, data: str | dict, split: str = "val", batch_size: int = 1,
             device: str = "auto") -> dict:
    """Evaluate a model (a path or a Segmenter) on a dataset split at full resolution, as
    ``edgeseg eval`` does: mIoU, pixel and mean accuracy, per-class IoU, the confusion matrix."""
    predictor = model.predictor if isinstance(model, Segmenter) else load_predictor(Path(model),
                                                                                      resolve_device(device))
    result = evaluate_predictor(predictor, open_dataset(data, split), batch_size=batch_size)
    return {**result, "model": str(model.path if isinstance(model, Segmenter) else model), "data": data}


__all__ = ["Segmenter", "as_rgb_array", "evaluate", "train"]
