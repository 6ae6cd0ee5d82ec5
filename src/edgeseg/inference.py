"""Predictors: a model plus its pre-processing, turning normalised image batches of any size
into logits at input resolution. eval, predict and bench all go through one of these, so the
trained model and (later) the exported one are measured by the same code."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from edgeseg.data.classes import ClassInfo
from edgeseg.data.transforms import Normalize
from edgeseg.errors import ModelError
from edgeseg.models.model_dir import ModelConfig, load_model_dir


class TorchPredictor:
    """A PyTorch model with its config (classes, normalisation, output stride)."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, device: torch.device) -> None:
        self.model, self.config, self.device = model, config, device
        self.classes: ClassInfo = self.config.class_info()
        self.normalize = Normalize(self.config.mean, self.config.std)
        self.output_stride = self.config.output_stride
        self.backend = "pytorch"

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, H, W) logits; pads to the output stride
        (with zeros, i.e. the mean colour) and crops the result back."""
        h, w = images.shape[-2:]
        s = self.output_stride
        ph, pw = (-h) % s, (-w) % s
        x = images.to(self.device, non_blocking=True)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.model(x)
        return out[..., :h, :w]

    @classmethod
    def from_dir(cls, path: str | Path, device: torch.device) -> "TorchPredictor":
        loaded = load_model_dir(path, device)
        return cls(loaded.model, loaded.config, device)

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, H, W) int64 class ids."""
        return self.logits(images).argmax(dim=1)


def load_predictor(path: str | Path, device: torch.device) -> TorchPredictor:
    """A predictor for a model directory."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise ModelError(f"{path}: ONNX models are not supported by this version yet; pass a model directory")
    return TorchPredictor.from_dir(path, device)
