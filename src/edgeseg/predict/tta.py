"""Test-time augmentation: a predictor that runs another on flipped and rescaled copies of
each image and averages the class probabilities at the image's own resolution. Off unless
asked for (``--tta flip``, ``--tta flip,0.75,1.25``): every extra view costs a forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeseg.errors import ConfigError
from edgeseg.metrics import class_ids

MAX_SCALE = 4.0


@dataclass(frozen=True)
class TTASpec:
    """The views: every scale (1.0 always among them), each also mirrored when ``flip``."""

    flip: bool
    scales: tuple[float, ...]

    def __str__(self) -> str:
        return ",".join((["flip"] if self.flip else []) + [f"{s:g}" for s in self.scales if s != 1.0])

    @property
    def views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)


def parse_tta(text: str) -> TTASpec:
    """'flip', '0.75,1.25' or 'flip,0.75,1.25' (comma separated; scale 1 is always included)."""
    flip, scales = False, [1.0]
    for token in (t.strip() for t in text.split(",")):
        if token == "flip":
            flip = True
            continue
        try:
            scale = float(token)
        except ValueError:
            raise ConfigError(f"--tta: '{token}' is neither 'flip' nor a scale such as 0.75") from None
        if not 0 < scale <= MAX_SCALE:
            raise ConfigError(f"--tta: scale {token} must lie in (0, {MAX_SCALE:g}]")
        if scale not in scales:
            scales.append(scale)
    if not flip and scales == [1.0]:
        raise ConfigError(f"--tta: '{text}' adds no view; give flip and/or scales, e.g. flip,0.75,1.25")
    return TTASpec(flip, tuple(scales))


class TTAPredictor:
    """``predictor`` averaged over the views of ``spec``: each view's logits are resized back
    to the input size (bilinear), mirrored back if flipped, turned into probabilities, and
    the probabilities averaged. ``logits`` returns the log of that average, so argmax (and
    every caller of ``logits`` or ``labels``) sees the averaged prediction."""

    def __init__(self, predictor, spec: TTASpec) -> None:
        self.inner, self.spec = predictor, spec
        self.config, self.classes, self.normalize = predictor.config, predictor.classes, predictor.normalize
        self.output_stride, self.device = predictor.output_stride, predictor.device
        self.backend = f"{predictor.backend} tta {spec}"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, H, W) class probabilities averaged over the views."""
        h, w = images.shape[-2:]
        images = images.to(self.device)
        total = None
        for scale in self.spec.scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            scaled = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear",
                                                                 align_corners=False)
            for flipped in (False, True) if self.spec.flip else (False,):
                logits = self.inner.logits(scaled.flip(-1) if flipped else scaled).float().to(self.device)
                if flipped:
                    logits = logits.flip(-1)
                if size != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probabilities = logits.softmax(dim=1)
                total = probabilities if total is None else total + probabilities
        return total / self.spec.views

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The log of the averaged probabilities (N, C, H, W)."""
        return self.probabilities(images).clamp_min(1e-30).log()

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        return class_ids(self.probabilities(images))

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """No padding ahead of ``logits``: each view is padded by the wrapped predictor, after
        mirroring and resizing (a mirrored pre-padded image would have its padding on the left)."""
        return height, width
