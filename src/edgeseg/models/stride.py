"""Output stride arithmetic: a model with output stride s takes inputs whose sides are
multiples of s; everything else is zero-padded at the bottom and right (the mean colour,
after normalisation) and its outputs cropped back."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def round_up(size: tuple[int, int] | list[int], stride: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``stride``."""
    return tuple(-(-int(side) // stride) * stride for side in size)


def fits_stride(size: tuple[int, int] | list[int], stride: int) -> bool:
    """Whether both sides of ``size`` are multiples of ``stride``."""
    return all(int(side) % stride == 0 for side in size)


def pad_to_stride(images: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., H, W) zero-padded at the bottom/right to multiples of ``stride``."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images
