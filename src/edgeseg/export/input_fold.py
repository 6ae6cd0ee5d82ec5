"""Pixel scaling folded into a model's first convolution, so that a deployed model can take
the decoded image as it is (0-255) instead of a normalised float copy made per frame.

``(x / 255 - mean) / std`` is split in two. The per-channel scale ``1 / (255 std)``
multiplies the first conv's weights along their input channels: exact, since scaling
commutes with the conv's zero padding. The mean is subtracted from the input first
(``x - 255 mean``): folding it into the bias as well would be wrong at the borders, where
the conv's zero padding would then stand for the pixel value 0 instead of the mean colour.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn



def first_conv(model: nn.Module, example: torch.Tensor) -> nn.Conv2d | None:
    """The plain Conv2d that ``model`` applies to its input before anything else touches it
    (found by running ``example``), or None. (The input may still feed other layers too, as
    in models that inject the downsampled image: ``PixelInput`` checks the fold by running.)"""
    seen: list[tuple[nn.Conv2d, bool]] = []

    def record(module, inputs):
        if not seen:
            seen.append((module, inputs[0] is example))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen[0][0] if seen and seen[0][1] and seen[0][0].groups == 1 else None


class PixelInput(nn.Module):
    """``model`` fed 0-255 pixels: (N, 3, H, W) of any dtype -> what ``model`` gives for the
    normalised image; pad an image with ``255 * mean`` where the normalised path pads zeros.

    ``folded``: the scale sits in the first conv's weights, checked on ``pixels`` (an example
    (1, 3, H, W) 0-255 image whose sides are multiples of the output stride) against the
    model on the normalised image. Where the input goes anywhere but one plain conv (a model
    that also pools the image into later layers) the scale stays a multiply on the input."""

    def __init__(self, model: nn.Module, mean, std, pixels: torch.Tensor, tolerance: float = 1e-4) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.register_buffer("offset", 255.0 * torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)))
        normalised = ((pixels.float() / 255.0 - self.offset / 255.0) * (255.0 * self.scale))
        self.folded = False
        conv = first_conv(self.model, normalised)
        if conv is None:
            return
        with torch.no_grad():
            expected = self.model(normalised)
            original = conv.weight.clone()
            conv.weight.mul_(self.scale.view(1, -1, 1, 1).to(conv.weight))
            self.folded = True
            got = self(pixels)
        if not (got - expected).abs().max() <= tolerance * max(1.0, float(expected.abs().max())):
            with torch.no_grad():
                conv.weight.copy_(original)
            self.folded = False

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() - self.offset
        return self.model(x if self.folded else x * self.scale)


class DecodedImageInput(nn.Module):
    """The model fed the image as a decoder gives it: (1, H, W, 3) uint8 RGB -> (1, C, H, W)
    logits, or with ``class_ids`` (1, H, W) uint8 ids (first class on ties). Transposed,
    scaled (``PixelInput``), zero-padded after the mean is subtracted (the mean colour, as the
    normalised path pads) at the bottom and right to ``stride``, and cropped back.

    Measured (bench/frame_overhead.py): the scaling costs nothing in the graph, but ONNX
    Runtime's ArgMax over the class axis costs more than ``edgeseg.metrics.class_ids``."""

    def __init__(self, pixel_model: PixelInput, stride: int, class_ids: bool = False) -> None:
        super().__init__()
        self.pixel_model, self.stride, self.class_ids = pixel_model, stride, class_ids

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[1], image.shape[2]
        x = image.permute(0, 3, 1, 2).float() - self.pixel_model.offset
        x = F.pad(x, (0, (-w) % self.stride, 0, (-h) % self.stride))
        logits = self.pixel_model.model(x if self.pixel_model.folded else x * self.pixel_model.scale)[..., :h, :w]
        return logits.argmax(dim=1).to(torch.uint8) if self.class_ids else logits
