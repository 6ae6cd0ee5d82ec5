"""The structure of a filter-pruned model: the architecture with some convs narrower.

A pruned model directory's config.json records ``widths``, conv name -> output channels,
for every conv that pruning narrowed (names as ``edgeseg info`` lists them). ``apply_widths``
makes that change on a freshly built architecture without weights: it follows the channel
flow (``channel_graph``) and resizes every module that reads those channels (BatchNorms,
PReLUs, the next convs' inputs, depth-wise and grouped convs, concats, depth-to-space), so a
pruned model directory rebuilds from config.json alone and then loads its weights strictly.
The uniform case, every layer scaled alike, is an architecture's own ``width`` argument.
Choosing and slicing filters lives in ``edgeseg.compress.prune``.
"""

from __future__ import annotations

import difflib

from torch import nn

from edgeseg.errors import ModelError
from edgeseg.models.blocks import ConvBNAct, FixedBilinearDeconv
from edgeseg.models.channel_graph import channel_steps
from edgeseg.models.folded import ChannelAffine


def is_depthwise(conv: nn.Conv2d) -> bool:
    """True when the architecture gave every input channel its own group (its outputs follow its
    inputs). A grouped conv narrowed to one channel per group stays grouped: the mark set by
    ``resized_conv`` remembers what the architecture built."""
    mark = getattr(conv, "depthwise", None)
    return mark if mark is not None else conv.groups > 1 and conv.groups == conv.in_channels


def resized_conv(conv: nn.Conv2d, in_channels: int, out_channels: int, groups: int) -> nn.Conv2d:
    """A conv like ``conv`` with other channel counts (placeholder weights)."""
    if (conv.in_channels, conv.out_channels, conv.groups) == (in_channels, out_channels, groups):
        return conv
    new = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode).to(conv.weight.device)
    new.depthwise = is_depthwise(conv)
    return new


def resized_per_channel(module: nn.Module, channels: int) -> nn.Module:
    """``module`` (a BatchNorm, PReLU, affine or fixed deconvolution) for ``channels`` channels;
    itself when it holds nothing per channel or already fits."""
    if isinstance(module, nn.BatchNorm2d) and module.num_features != channels:
        return nn.BatchNorm2d(channels, module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.PReLU) and module.num_parameters not in (1, channels):
        return nn.PReLU(channels)
    if isinstance(module, ChannelAffine) and module.scale.numel() != channels:
        return ChannelAffine(channels)
    if isinstance(module, FixedBilinearDeconv) and module.channels != channels:
        return module.with_channels(channels)
    return module


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv whose width is its own choice (not depth-wise)."""
    return {f"{name}.conv": block.conv.out_channels for name, block in model.named_modules()
            if isinstance(block, ConvBNAct) and not is_depthwise(block.conv)}


def apply_widths(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Narrow (or widen) ``model`` in place so each conv named in ``widths`` has that many output
    channels and every module after it fits; returns the model, which remembers ``widths``.

    Raises a one-line ModelError for a name that is no conv of the model (with a suggestion),
    for widths that cannot hold together (convs added together with different widths, a
    grouped conv whose groups do not divide its channels, depth-to-space of a width its block
    does not divide), and for a model whose channel flow cannot be followed.
    """
    known = conv_widths(model)
    for name, width in widths.items():
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ModelError(f"widths: '{name}' is no prunable conv of this model{hint}")
        if not isinstance(width, int) or width < 1:
            raise ModelError(f"widths: '{name}' must be a positive number of channels, not {width!r}")
    steps = channel_steps(model)
    counts: list[int] = []
    for step in steps:
        sizes = [counts[i] for i in step.inputs]
        if step.kind == "input":
            count = 3
        elif step.kind == "conv":
            count = _resize_block(model, step.name, step.module, sizes[0], widths)
        elif step.kind == "add":
            if len(set(sizes)) > 1:
                names = ", ".join(steps[i].name for i in step.inputs)
                raise ModelError(f"widths: '{step.name}' adds inputs of {' and '.join(map(str, sizes))} channels "
                                 f"({names}); convs added together need the same width")
            count = sizes[0]
        elif step.kind == "concat":
            count = sum(sizes)
        elif step.kind == "space_to_depth":
            count = sizes[0] * step.module.block ** 2
        elif step.kind == "depth_to_space":
            area = step.module.block ** 2
            if sizes[0] % area:
                raise ModelError(f"widths: '{step.name}' (depth-to-space) needs a multiple of {area} channels, "
                                 f"got {sizes[0]}")
            count = sizes[0] // area
        elif step.kind == "per_channel":
            count = sizes[0]
            if step.module is not None:
                resized = resized_per_channel(step.module, count)
                if resized is not step.module:
                    set_module(model, step.name, resized)
        else:  # output: the heads' logits
            count = sizes[0]
        counts.append(count)
    model.widths = dict(widths)
    return model


def _resize_block(model: nn.Module, name: str, block: ConvBNAct, in_channels: int, widths: dict[str, int]) -> int:
    conv = block.conv
    if is_depthwise(conv):
        groups = in_channels
        out_channels = conv.out_channels // conv.in_channels * in_channels
    else:
        groups = conv.groups
        out_channels = widths.get(f"{name}.conv", conv.out_channels)
        if in_channels % groups or out_channels % groups:
            raise ModelError(f"widths: '{name}.conv' has {groups} groups, which must divide its {in_channels} input "
                             f"and {out_channels} output channels")
    block.conv = resized_conv(conv, in_channels, out_channels, groups)
    block.bn = resized_per_channel(block.bn, out_channels)
    block.act = resized_per_channel(block.act, out_channels)
    return out_channels
