"""Where a layer stack's output pixels sit on its input: receptive-field arithmetic over
convs, pools and transposed convs (caffe's coord_map), and the crop offset that aligns an
upsampled score map with the image (FCN's Crop layer), derived instead of hard-coded.

A conv or pool with kernel k, stride s, padding p and dilation d puts the centre of output
pixel y at input coordinate s y + (d (k - 1) / 2 - p); a transposed conv inverts that map.
Composing the maps of a stack gives x = a y + b per axis; with a = 1 the output is on the
input's grid, shifted by b.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable

from torch import nn

from edgeseg.errors import ModelError
from edgeseg.models.blocks import ConvBNAct, FixedBilinearDeconv

# layers that compute each pixel from the same pixel: they leave coordinates where they are
PER_PIXEL = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.Hardswish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d,
             nn.LocalResponseNorm)

Map = tuple[Fraction, Fraction]  # input coordinate = scale x output coordinate + shift


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _layer_maps(module: nn.Module) -> list[tuple[Map, Map]]:
    """The (rows, columns) coordinate maps of ``module``'s layers, first layer first."""
    if isinstance(module, ConvBNAct):
        return _layer_maps(module.conv)
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _layer_maps(child)]
    if isinstance(module, PER_PIXEL):
        return []
    if isinstance(module, FixedBilinearDeconv):
        k, s, p, d, transposed = module.weight.shape[-2:], (module.stride,) * 2, (module.padding,) * 2, (1, 1), True
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        d = _pair(getattr(module, "dilation", 1))
        transposed = isinstance(module, nn.ConvTranspose2d)
    else:
        raise ModelError(f"cannot place the pixels of {type(module).__name__} on its input (not a conv, pool, "
                         f"transposed conv or per-pixel layer)")
    maps = []
    for kernel, stride, pad, dilation in zip(k, s, p, d):
        centre = Fraction(dilation * (kernel - 1), 2) - pad
        maps.append((Fraction(1, stride), -centre / stride) if transposed else (Fraction(stride), centre))
    return [tuple(maps)]


def coordinate_map(layers: Iterable[nn.Module]) -> tuple[Map, Map]:
    """For a stack run in the order given, (rows, columns) maps (a, b): the centre of output
    pixel y lies at input coordinate a y + b (exact fractions)."""
    total = [(Fraction(1), Fraction(0)), (Fraction(1), Fraction(0))]
    for layer in layers:
        for layer_map in _layer_maps(layer):
            # x = a y + b, y = a' z + b'  ->  x = (a a') z + (a b' + b)
            total = [(a * a2, a * b2 + b) for (a, b), (a2, b2) in zip(total, layer_map)]
    return total[0], total[1]


def crop_offset(layers: Iterable[nn.Module]) -> tuple[int, int]:
    """The (rows, columns) offset at which to crop the stack's output so that its pixel (i, j)
    sits on input pixel (i, j) (FCN-AlexNet's: 18). A ModelError when the output is not on the
    input's grid (overall scale not 1), lies inside the image (negative offset), or is shifted
    by a fraction of a pixel."""
    offsets = []
    for axis, (scale, shift) in zip(("rows", "columns"), coordinate_map(layers)):
        if scale != 1:
            raise ModelError(f"the output is not on the input's grid ({axis}: scale {scale}); no crop aligns it")
        if shift.denominator != 1 or shift > 0:
            raise ModelError(f"the output is shifted by {-shift} pixels ({axis}); a crop needs a whole, "
                             f"non-negative offset")
        offsets.append(int(-shift))
    return offsets[0], offsets[1]
