"""Joint image/label transforms. Images are resized bilinearly, labels always with nearest
neighbour; crops pad labels with the ignore index so padding never counts as a class."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator

from edgeseg.data.classes import IGNORE_INDEX
from edgeseg.schema import StrictModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ScaleConfig(StrictModel):
    prob: float = Field(1.0, ge=0.0, le=1.0, description="chance of rescaling a sample")
    min: float = Field(0.75, gt=0.0)
    max: float = Field(1.5, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"scale min {self.min} exceeds max {self.max}")
        return self


class JitterConfig(StrictModel):
    brightness: float = Field(0.0, ge=0.0)
    contrast: float = Field(0.0, ge=0.0)
    saturation: float = Field(0.0, ge=0.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)


class BlurConfig(StrictModel):
    """Gaussian blur of a random strength: defocus and motion-softened frames of other cameras."""

    prob: float = Field(0.5, ge=0.0, le=1.0, description="chance of blurring a sample")
    sigma: tuple[float, float] = Field((0.1, 1.5), description="(min, max) of the Gaussian's sigma in pixels")

    @model_validator(mode="after")
    def _ordered(self):
        low, high = self.sigma
        if not 0 < low <= high:
            raise ValueError(f"blur sigma needs 0 < min <= max, got {low}, {high}")
        return self


class NoiseConfig(StrictModel):
    """Additive Gaussian pixel noise: sensor noise of darker or cheaper cameras."""

    prob: float = Field(0.5, ge=0.0, le=1.0, description="chance of adding noise to a sample")
    std: float = Field(8.0, gt=0.0, le=128.0, description="largest noise standard deviation, in 0-255 grey levels "
                                                           "(each sample draws one in [0, std])")


class PhaseConfig(StrictModel):
    """A stretch of early epochs with their own scale range and crop size."""

    epochs: int = Field(..., ge=1, description="epochs this phase lasts")
    scale: ScaleConfig | None = Field(None, description="scale range in this phase; unset: no rescaling")
    crop: tuple[PositiveInt, PositiveInt] | None = Field(None, description="crop (height, width) in this phase; unset: none")


class AugmentConfig(StrictModel):
    """Training-time augmentation; evaluation only normalises."""

    scale: ScaleConfig | None = None
    crop: tuple[PositiveInt, PositiveInt] | None = Field(None, description="(height, width) of random crops")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="chance of a horizontal flip")
    color_jitter: JitterConfig | None = None
    blur: BlurConfig | None = Field(None, description="Gaussian blur after the colour jitter: {prob, sigma: [min, max]}")
    noise: NoiseConfig | None = Field(None, description="Gaussian pixel noise last: {prob, std (0-255 levels)}")
    phases: list[PhaseConfig] = Field(
        default_factory=list, description="progressive resizing: the first epochs in these phases, in order (e.g. "
                                          "half-scale images and half-size crops, 2.5-4x cheaper steps), then the "
                                          "scale and crop above")

    def geometry(self, epoch: int) -> tuple[ScaleConfig | None, tuple[int, int] | None]:
        """The (scale, crop) that training uses in ``epoch`` (counted from 0)."""
        for phase in self.phases:
            if epoch < phase.epochs:
                return phase.scale, phase.crop
            epoch -= phase.epochs
        return self.scale, self.crop


class Normalize:
    """uint8 HWC image -> float32 CHW tensor, (x / 255 - mean) / std; label -> int64 HW."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() / 255.0 - self.mean) / self.std

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), label.long()


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 and (H, W) uint8 arrays -> (3, H, W) uint8 and (H, W) uint8 tensors."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(np.ascontiguousarray(label))


def random_scale(image, label, factor: float):
    """Resize a (3, H, W) uint8 image (antialiased bilinear, as torchvision's resize) and its
    (H, W) label (nearest) by ``factor``. Plain torch: torchvision costs seconds to import."""
    h, w = label.shape[-2:]
    size = [max(1, round(h * factor)), max(1, round(w * factor))]
    if size == [h, w]:
        return image, label
    image = F.interpolate(image[None], size, mode="bilinear", align_corners=False, antialias=True)[0]
    label = F.interpolate(label[None, None], size, mode="nearest-exact")[0, 0]
    return image, label


def pad_to(image, label, height: int, width: int, fill: int = 0):
    """Pad bottom/right up to (height, width): image with ``fill``, label with the ignore index."""
    h, w = label.shape[-2:]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph or pw:
        image = F.pad(image, [0, pw, 0, ph], value=fill)
        label = F.pad(label, [0, pw, 0, ph], value=IGNORE_INDEX)
    return image, label


class TrainTransform:
    """Random scale -> padded random crop -> flip -> colour jitter -> blur -> noise -> normalise.

    Randomness comes from torch's global generator, so DataLoader worker seeding (and the
    training engine's seed) makes it reproducible.
    """

    def __init__(self, config: AugmentConfig, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.config = config
        self.normalize = Normalize(mean, std)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Use the scale and crop of ``epoch``'s phase (DataLoader workers made after this see it)."""
        self.scale, self.crop = self.config.geometry(epoch)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, scale = self.config, self.scale
        image, label = to_tensors(image, label)
        if scale is not None and torch.rand(()).item() < scale.prob:
            factor = math.exp(self._uniform(math.log(scale.min), math.log(scale.max)))
            image, label = random_scale(image, label, factor)
        if self.crop is not None:
            ch, cw = self.crop
            image, label = pad_to(image, label, ch, cw)
            h, w = label.shape
            top = int(torch.randint(0, h - ch + 1, ()).item())
            left = int(torch.randint(0, w - cw + 1, ()).item())
            image, label = image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        if torch.rand(()).item() < cfg.hflip:
            image, label = image.flip(-1), label.flip(-1)
        if cfg.color_jitter is not None:
            image = self._jitter(image, cfg.color_jitter)
        if cfg.blur is not None and torch.rand(()).item() < cfg.blur.prob:
            image = gaussian_blur(image.float(), self._uniform(*cfg.blur.sigma))
        if cfg.noise is not None and torch.rand(()).item() < cfg.noise.prob:
            noisy = image.float() + torch.randn(image.shape) * self._uniform(0.0, cfg.noise.std)
            image = noisy.clamp_(0.0, 255.0)
        return self.normalize(image, label)

    def _jitter(self, image: torch.Tensor, jitter: JitterConfig) -> torch.Tensor:
        """Brightness, contrast, saturation and hue in random order, as torchvision defines
        them, computed in float in one pass (no uint8 round trip between the ops)."""
        factors = {name: self._uniform(max(0.0, 1 - amount), 1 + amount)
                   for name, amount in (("brightness", jitter.brightness), ("contrast", jitter.contrast),
                                        ("saturation", jitter.saturation)) if amount}
        hue = self._uniform(-jitter.hue, jitter.hue) if jitter.hue else None
        names = [*factors, *(["hue"] if hue is not None else [])]
        x = image.float()
        for index in torch.randperm(len(names)).tolist():
            name = names[index]
            if name == "hue":
                from torchvision.transforms.v2.functional import adjust_hue  # seconds to import: only when used

                x = adjust_hue(x / 255.0, hue) * 255.0
            else:
                x = adjust(x, name, factors[name])
        return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A float (C, H, W) image blurred by a separable Gaussian of ``sigma`` pixels (kernel
    radius ceil(3 sigma), reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)
    if radius < 1:
        return x
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    channels = x.shape[0]
    y = F.pad(x.unsqueeze(0), [radius, radius, radius, radius], mode="reflect")
    y = F.conv2d(y, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    y = F.conv2d(y, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return y.squeeze(0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def adjust(x: torch.Tensor, name: str, factor: float) -> torch.Tensor:
    """One photometric op on a float (3, H, W) image in [0, 255], clamped to that range."""
    if name == "brightness":
        out = x * factor
    elif name == "contrast":
        out = factor * x + (1 - factor) * _gray(x).mean()
    else:
        out = factor * x + (1 - factor) * _gray(x)
    return out.clamp_(0.0, 255.0)


class EvalTransform:
    """Full-resolution evaluation: only tensors and normalisation."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(*to_tensors(image, label))
