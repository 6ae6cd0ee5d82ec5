"""The building blocks every architecture is made of.

``ConvBNAct`` is the one unit that BN folding, pruning, quantization observers and sparsity
masks understand; ``Add``, ``Concat`` and ``Upsample`` make merges and resizes explicit
modules so a pass can see the graph without tracing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": lambda ch: nn.ReLU(inplace=True),
    "relu6": lambda ch: nn.ReLU6(inplace=True),
    "prelu": lambda ch: nn.PReLU(ch),
    "hardswish": lambda ch: nn.Hardswish(inplace=True),
    "none": lambda ch: nn.Identity(),
}


class ConvBNAct(nn.Module):
    """conv -> batch norm -> activation, 'same' padding for odd (possibly rectangular) kernels
    unless ``padding`` is given.

    ``bn=False`` gives the conv a bias instead (as after BN folding, or in a net without BN
    such as AlexNet); ``act='none'`` leaves the output linear (a classifier).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int = 1, dilation: int = 1, groups: int = 1, bn: bool = True, act: str = "relu",
                 padding: int | None = None) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{act}' (valid: {', '.join(ACTIVATIONS)})")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if padding is None:
            padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self.act = ACTIVATIONS[act](out_channels)
        self.weight_quantizer: nn.Module | None = None  # set by compress.quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_quantizer is None:
            return self.act(self.bn(self.conv(x)))
        weight = self.weight_quantizer(self.conv.weight)
        if torch.jit.is_tracing():  # ONNX export
            return self.act(self.bn(self.conv._conv_forward(x, weight, self.conv.bias)))
        parameters = {"weight": weight} if self.conv.bias is None else {"weight": weight, "bias": self.conv.bias}
        # called as the module (its hooks fire: profiling sees the conv), with the quantized weight
        return self.act(self.bn(torch.func.functional_call(self.conv, parameters, (x,))))


class Add(nn.Module):
    """Elementwise sum of its inputs."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    """Channel concatenation of its inputs."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=self.dim)


class Upsample(nn.Module):
    """Resize by ``scale`` (or to the size of a reference tensor passed as second input).

    ``logits=True`` marks the resize of a classifier's output to input resolution: it runs in
    float32 and NCHW whatever autocast and the memory format made of its input. With bfloat16
    autocast and channels-last, resizing a few-channel map (and the loss's backward through
    it) is 1.8x slower otherwise; the loss reads float32 logits anyway.
    """

    def __init__(self, scale: float = 2, mode: str = "bilinear", logits: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.mode = mode
        self.logits = logits

    def forward(self, x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        align = False if self.mode in ("bilinear", "bicubic") else None
        if self.logits and (x.dtype != torch.float32 or not x.is_contiguous()):  # float32 graphs trace unchanged
            x = x.float().contiguous()
        if like is not None:
            return F.interpolate(x, size=like.shape[-2:], mode=self.mode, align_corners=align)
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=align)


class SpaceToDepth(nn.Module):
    """(N, C, H, W) -> (N, C x b^2, H / b, W / b): each b x b patch becomes channels (a pure
    rearrangement, so it keeps its input's quantization grid)."""

    def __init__(self, block: int = 2) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.block)


class DepthToSpace(nn.Module):
    """The inverse of SpaceToDepth: (N, C x b^2, H, W) -> (N, C, H x b, W x b)."""

    def __init__(self, block: int = 2) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.block)


class AdaptiveAvgPool(nn.Module):
    """Average pooling to a ``grid`` x ``grid`` output (PSP/SwiftNet pyramid pooling).

    ONNX has no adaptive pooling for sizes the grid does not divide, so during ONNX export
    the same bins (rows floor(i H / g) .. ceil((i + 1) H / g), likewise columns) are computed
    as two averaging matrices, constants of the graph for the traced input size. An export
    with dynamic height and width sets ``dynamic_size``: the matrices are then computed from
    the input's shape in the graph (arange and comparisons), exact at every size.
    """

    dynamic_size = False

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return F.adaptive_avg_pool2d(x, self.grid)
        h, w = x.shape[-2:]
        if not self.dynamic_size:  # Python ints: every op building the matrices folds to a constant
            h, w = int(h), int(w)
        rows = averaging_matrix(h, self.grid, x.dtype)
        cols = averaging_matrix(w, self.grid, x.dtype)
        return rows @ x @ cols.t()


def averaging_matrix(size, grid: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (grid, size) matrix whose row i averages adaptive pooling's bin i:
    columns floor(i size / grid) .. ceil((i + 1) size / grid) - 1 weigh 1 / bin length.

    ``size`` may be a traced shape value: the matrix is then built by arange and comparisons
    (no slice assignment, which traces to ScatterND chains some ONNX engines misread).
    """
    bins = torch.arange(grid, dtype=torch.int64)
    start = torch.div(bins * size, grid, rounding_mode="trunc")  # all non-negative: trunc is floor
    end = torch.div((bins + 1) * size + grid - 1, grid, rounding_mode="trunc")
    columns = torch.arange(size)
    inside = (columns[None, :] >= start[:, None]) & (columns[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


class PoolConcatDownsample(nn.Module):
    """ENet-style downsampling: a stride-2 3x3 conv concatenated with 2x2 max pooling of
    the input when the output is wider than the input (else the conv alone), then BN and
    the activation."""

    def __init__(self, in_channels: int, out_channels: int, act: str = "relu") -> None:
        super().__init__()
        self.pool_channels = in_channels if out_channels > in_channels else 0
        pooled = bool(self.pool_channels)
        self.conv = ConvBNAct(in_channels, out_channels - self.pool_channels, 3, stride=2,
                              bn=not pooled, act="none" if pooled else act)
        self.concat = Concat()
        self.bn = nn.BatchNorm2d(out_channels) if pooled else nn.Identity()
        self.act = ACTIVATIONS[act](out_channels) if pooled else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pool_channels:
            y = self.act(self.bn(self.concat(y, F.max_pool2d(x, 2))))
        return y


class SegmentationModel(nn.Module):
    """Base of every registered model: NCHW logits at input resolution.

    Subclasses set ``output_stride`` and implement ``forward_features``. A model with
    training-only auxiliary heads (PSPNet's, ICNet's cascade) names them in ``head_weights``
    (head -> default loss weight; the main output is "main") and implements
    ``forward_heads``, which returns every head's logits; ``forward(x, heads=True)`` returns
    that dict. Everything else (evaluation, prediction, export, the compression passes' checks)
    calls ``forward(x)`` and sees the main output only. ``drop_auxiliary_heads`` removes the
    heads' modules (a quantized or deployed model has none).
    """

    output_stride: int = 1
    head_weights: dict[str, float] = {"main": 1.0}
    auxiliary_modules: tuple[str, ...] = ()  # the modules only the auxiliary heads use
    auxiliary_dropped = False
    # (mean, std) the architecture's inputs are normalised with, (x / 255 - mean) / std, when
    # it fixes its own (FCN-AlexNet: x - 116); None: the training config's (ImageNet's)
    input_normalization: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    def check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        s = self.output_stride
        if h % s or w % s:
            raise ValueError(f"input size {h}x{w} is not divisible by the model's output stride {s}; "
                             f"pad or resize to a multiple of {s}")

    def forward(self, x: torch.Tensor, heads: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        self.check_input(x)
        return self.forward_heads(x) if heads else self.forward_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's logits ("main" first); only the main one is at input resolution."""
        return {"main": self.forward_features(x)}

    @property
    def has_auxiliary_heads(self) -> bool:
        return any(getattr(self, name, None) is not None for name in self.auxiliary_modules)

    def drop_auxiliary_heads(self) -> None:
        for name in self.auxiliary_modules:
            setattr(self, name, None)
        self.head_weights = {"main": 1.0}
        self.auxiliary_dropped = True


def bilinear_ramp(size: int) -> torch.Tensor:
    """The 1-D bilinear interpolation kernel of a ``size``-tap transposed conv (caffe's
    "bilinear" filler): a triangle of half-width ceil(size / 2) centred on the taps."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    return 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor


def bilinear_kernel(size: int | tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (kh, kw) bilinear interpolation kernel used by caffe's fixed deconvolutions."""
    kh, kw = (size, size) if isinstance(size, int) else size
    return (bilinear_ramp(kh)[:, None] * bilinear_ramp(kw)[None, :]).to(dtype)


def bilinear_weight(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                    groups: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A transposed conv weight, shape (in, out / groups, kh, kw), that upsamples each channel
    on its own by bilinear interpolation: output channel c reads input channel c only.
    Needs in_channels == out_channels (one channel per group, or a dense diagonal)."""
    if in_channels != out_channels or in_channels % groups:
        raise ValueError(f"bilinear upsampling maps each channel to itself: {in_channels} in, {out_channels} out, "
                         f"{groups} groups")
    kernel = bilinear_kernel(kernel_size, dtype)
    per_group = out_channels // groups
    weight = torch.zeros(in_channels, per_group, *kernel.shape, dtype=dtype)
    channels = torch.arange(in_channels)
    weight[channels, channels % per_group] = kernel
    return weight


@torch.no_grad()
def init_bilinear_(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Set a transposed conv (kernel 2s or 2s - 1 for stride s) to bilinear interpolation of
    each channel, bias zero. Away from the borders output pixel z then holds the input
    linearly interpolated at (z - (k - 1) / 2 + padding) / s (``alignment.coordinate_map``);
    with kernel 2s and padding s / 2 that is F.interpolate's bilinear resize (align_corners
    False)."""
    deconv.weight.copy_(bilinear_weight(deconv.in_channels, deconv.out_channels, deconv.kernel_size, deconv.groups,
                                        deconv.weight.dtype))
    if deconv.bias is not None:
        deconv.bias.zero_()
    return deconv


class FixedBilinearDeconv(nn.Module):
    """Upsampling by a frozen depthwise transposed conv with a bilinear kernel (caffe-jacinto's
    and FCN's upsampling; default x2: kernel 4, stride 2, padding 1). Its weight is a constant,
    not a parameter, so training, sparsity and pruning passes leave it alone."""

    def __init__(self, channels: int, kernel_size: int = 4, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.register_buffer("weight", bilinear_weight(channels, channels, kernel_size, channels), persistent=False)

    def with_channels(self, channels: int) -> "FixedBilinearDeconv":
        """The same upsampling for ``channels`` channels."""
        return FixedBilinearDeconv(channels, self.kernel_size, self.stride, self.padding).to(self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.channels)


class Crop(nn.Module):
    """The window of ``x`` at ``offset`` (rows, columns) the size of the reference input ``like``
    (caffe's Crop layer, which aligns an upsampled score map with the image)."""

    def __init__(self, offset: tuple[int, int]) -> None:
        super().__init__()
        self.offset = tuple(int(o) for o in offset)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        top, left = self.offset
        h, w = like.shape[-2:]
        return x[..., top:top + h, left:left + w]
