"""Predictors: a model plus its pre-processing, turning normalised image batches of any size
into logits at input resolution. eval, predict, bench and the Python API all go through one of
these, so a trained model, its ONNX file and its deploy bundle are measured by the same code.

Backends: ``TorchPredictor`` (a model directory, on any device) and ``OnnxPredictor`` (an
``.onnx`` file, or a bundle's model.onnx, in ONNX Runtime on the CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

import torch
import torch.nn.functional as F
from PIL import Image

from edgeseg.data.classes import ClassInfo
from edgeseg.data.imageio import to_channels
from edgeseg.data.transforms import Normalize
from edgeseg.errors import ModelError
from edgeseg.layout import BUNDLE_MODEL, CONFIG_NAME
from edgeseg.metrics import class_ids
from edgeseg.models.model_dir import ModelConfig, load_model_dir
from edgeseg.predict.metadata import read_metadata
from edgeseg.runtime import resolve_device


class Predictor(Protocol):
    """What every backend offers."""

    config: ModelConfig
    classes: ClassInfo
    normalize: Normalize
    output_stride: int
    device: torch.device
    backend: str

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, H, W) logits at input resolution."""

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, H, W) int64 class ids."""

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of this size is zero-padded to before it enters the model."""


def model_input(predictor: Predictor, rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H', W') float32: normalised as the model expects and
    zero-padded (the mean colour) at the bottom and right to ``predictor.padded_size``, so
    that ``predictor.logits`` pads nothing more (this step can run on another thread)."""
    h, w = rgb.shape[:2]
    ph, pw = predictor.padded_size(h, w)
    if predictor.config.input_channels == "gray":
        rgb = to_channels(Image.fromarray(rgb), "gray")
    normalised = predictor.normalize.image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
    padded = torch.zeros(1, 3, max(ph, h), max(pw, w))
    padded[0, :, :h, :w] = normalised
    return padded


def labels_from_logits(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, C, H', W') logits of a padded input -> (height, width) uint8 class ids."""
    return class_ids(logits[:, :, :height, :width])[0].to("cpu", torch.uint8).numpy()


def label_map(predictor: Predictor, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class ids: normalised as the model expects, padded
    to its stride or input size and cropped back (``model_input``, ``predictor.logits``,
    ``labels_from_logits``: the steps ``predict.frames`` overlaps)."""
    return labels_from_logits(predictor.logits(model_input(predictor, rgb)), *rgb.shape[:2])


class TorchPredictor:
    """A PyTorch model with its config (classes, normalisation, output stride)."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, device: torch.device) -> None:
        self.model, self.config, self.device = model, config, device
        self.classes: ClassInfo = self.config.class_info()
        self.normalize = Normalize(self.config.mean, self.config.std)
        self.output_stride = self.config.output_stride
        self.pad_to_shape: tuple[int, int] | None = None
        self.backend = "pytorch"

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, H, W) logits; pads to the output stride
        or to ``pad_to_shape`` (with zeros, i.e. the mean colour) and crops the result back."""
        h, w = images.shape[-2:]
        x = pad_to_shape(images.to(self.device, non_blocking=True), self.padded_size(h, w))
        return self.model(x)[..., :h, :w]

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        if self.pad_to_shape:
            return fitting_shape(height, width, self.pad_to_shape)
        s = self.output_stride
        return height + (-height) % s, width + (-width) % s

    @classmethod
    def from_dir(cls, path: str | Path, device: torch.device) -> "TorchPredictor":
        loaded = load_model_dir(path, device)
        return cls(loaded.model, loaded.config, device)

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, H, W) int64 class ids."""
        return class_ids(self.logits(images))


def ort_session(model: str | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of a file or serialised graph, all graph optimisations on."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    # idle worker threads would spin and steal the core from whatever runs next (another
    # model timed side by side, the decoder of the next frame)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """An edgeseg ONNX export run by ONNX Runtime (CPU, all graph optimisations), with the
    same interface as TorchPredictor. Images are zero-padded (the mean colour) at the bottom
    and right to the file's fixed input size, or for a file with dynamic height and width
    (``size`` None) to the output stride, and the logits cropped back."""

    def __init__(self, session, source: str) -> None:
        meta = read_metadata(session.get_modelmeta().custom_metadata_map)
        if "edgeseg_config" not in meta:
            raise ModelError(f"{source}: not an edgeseg export (no edgeseg_config in its metadata)")
        self.session, self.source = session, source
        self.config = ModelConfig(**meta["edgeseg_config"])
        self.classes: ClassInfo = self.config.class_info()
        self.normalize = Normalize(self.config.mean, self.config.std)
        self.output_stride = self.config.output_stride
        dims = session.get_inputs()[0].shape[2:]
        self.size = tuple(dims) if all(isinstance(d, int) for d in dims) else None
        self.precision = meta.get("precision", "fp32")
        self.pad_to_shape: tuple[int, int] | None = None
        self.device = torch.device("cpu")
        self.backend = "onnxruntime"

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None) -> "OnnxPredictor":
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: file not found")
        try:
            session = ort_session(str(path), threads)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None
        return cls(session, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, threads: int | None = None) -> "OnnxPredictor":
        return cls(ort_session(data, threads), "exported model")

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        if self.pad_to_shape:
            return fitting_shape(height, width, self.pad_to_shape)
        s = self.output_stride
        return self.size or (height + (-height) % s, width + (-width) % s)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        fh, fw = self.padded_size(h, w)
        if h > fh or w > fw:
            raise ModelError(f"{self.source}: image {h}x{w} is larger than the model's fixed input {fh}x{fw}; "
                             f"export again with --size")
        x = images.float().cpu()
        x = (x if (h, w) == (fh, fw) else F.pad(x, (0, fw - w, 0, fh - h))).contiguous().numpy()
        out = self.session.run(["logits"], {"image": x})[0]
        return torch.from_numpy(out[..., :h, :w])

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        return class_ids(self.logits(images))


def fitting_shape(height: int, width: int, shape: tuple[int, int]) -> tuple[int, int]:
    """``shape`` (--pad-to-shape), checked to hold an image of ``height`` x ``width``."""
    if height > shape[0] or width > shape[1]:
        raise ModelError(f"image {height}x{width} is larger than --pad-to-shape {shape[0]} {shape[1]}")
    return shape


def pad_to_shape(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) zero-padded at the bottom/right to exactly ``shape``; ModelError if larger."""
    h, w = images.shape[-2:]
    fitting_shape(h, w, shape)
    return images if (h, w) == tuple(shape) else F.pad(images, (0, shape[1] - w, 0, shape[0] - h))


def with_pad_to_shape(predictor: Predictor, shape: tuple[int, int] | None) -> Predictor:
    """``predictor``, set to pad every image to exactly ``shape`` (H, W) before the model (a
    fixed-shape inference, as ICNet's) and crop the prediction back; None: pad to the stride.
    The shape must suit the model: multiples of its output stride, a fixed ONNX input's size."""
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
        s = predictor.output_stride
        if min(shape) < 1 or shape[0] % s or shape[1] % s:
            raise ModelError(f"--pad-to-shape {shape[0]} {shape[1]}: both sides must be positive multiples of the "
                             f"model's output stride {s}")
        fixed = getattr(predictor, "size", None)
        if fixed is not None and tuple(fixed) != shape:
            raise ModelError(f"--pad-to-shape {shape[0]} {shape[1]}: the ONNX model's input is fixed at "
                             f"{fixed[0]}x{fixed[1]}")
    predictor.pad_to_shape = shape
    return predictor


def load_predictor(path: str | Path, device: torch.device | None = None) -> Predictor:
    """A predictor for a model directory, an ``.onnx`` file, or a deploy bundle (a folder
    with model.onnx). ``device``: default the first CUDA device if there is one, else the
    CPU; ONNX models run on the CPU whatever it says."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor.from_file(path)
    if (path / BUNDLE_MODEL).is_file() and not (path / CONFIG_NAME).is_file():
        return OnnxPredictor.from_file(path / BUNDLE_MODEL)
    return TorchPredictor.from_dir(path, device if device is not None else resolve_device("auto"))
