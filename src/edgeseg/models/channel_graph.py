"""The channel flow of a model as a list of steps, read by torch.fx with edgeseg's blocks
kept whole (a ``ConvBNAct``, ``Add`` or ``Concat`` is one step), so that width changes
(``edgeseg.models.pruned``) and filter pruning (``edgeseg.compress.prune``) follow the same
graph. Nothing runs: fx records the calls ``forward_features`` makes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import ModelError
from edgeseg.models.blocks import (AdaptiveAvgPool, Add, Concat, ConvBNAct, Crop, DepthToSpace,
                                   FixedBilinearDeconv, SpaceToDepth, Upsample)
from edgeseg.models.folded import ChannelAffine

# one output channel per input channel, computed from that channel alone
PER_CHANNEL_MODULES = (nn.BatchNorm2d, nn.PReLU, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Identity, nn.Dropout,
                       nn.Dropout2d, ChannelAffine, Upsample, AdaptiveAvgPool, FixedBilinearDeconv, Crop,
                       nn.MaxPool2d, nn.AvgPool2d)
PER_CHANNEL_FUNCTIONS = (F.avg_pool2d, F.max_pool2d, F.relu, F.interpolate, F.adaptive_avg_pool2d)
LEAVES = (ConvBNAct, Add, Concat, SpaceToDepth, DepthToSpace, *PER_CHANNEL_MODULES)


@dataclass(frozen=True)
class Step:
    """One call in the forward pass: ``kind`` is 'input', 'conv' (a ConvBNAct), 'add',
    'concat', 'space_to_depth', 'depth_to_space', 'per_channel' or 'output'; ``inputs``
    index earlier steps (only those carrying feature maps)."""

    kind: str
    name: str
    module: nn.Module | None
    inputs: tuple[int, ...]


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, LEAVES) or super().is_leaf_module(module, qualified_name)


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        heads = getattr(self.model, "forward_heads", None)
        return tuple(heads(x).values()) if heads is not None else self.model.forward_features(x)


def _kind(module: nn.Module) -> str:
    if isinstance(module, ConvBNAct):
        return "conv"
    if isinstance(module, Add):
        return "add"
    if isinstance(module, Concat):
        return "concat" if module.dim == 1 else "unsupported"
    if isinstance(module, SpaceToDepth):
        return "space_to_depth"
    if isinstance(module, DepthToSpace):
        return "depth_to_space"
    return "per_channel" if isinstance(module, PER_CHANNEL_MODULES) else "unsupported"


def channel_steps(model: nn.Module) -> list[Step]:
    """The steps of ``model.forward_heads`` (every head, auxiliary ones included, so that they
    follow a pruned layer too) in execution order, the first the input image and the last the
    output, whose inputs are the heads' logits. Raises a one-line ModelError naming the first call whose effect on
    channels is unknown (a plain conv outside ``ConvBNAct``, a reshape, an unknown function)."""
    wrapper = _Features(model)
    try:
        graph = _Tracer().trace(wrapper)
    except Exception as err:  # fx cannot follow data-dependent control flow
        raise ModelError(f"cannot read the layer graph of {type(model).__name__}: {str(err).splitlines()[0]}") from None
    modules = dict(wrapper.named_modules())
    steps: list[Step] = []
    index: dict[fx.Node, int] = {}
    for node in graph.nodes:
        feeds = tuple(index[arg] for arg in node.args if isinstance(arg, fx.Node) and arg in index)
        if node.op == "placeholder":
            step = Step("input", "input", None, ())
        elif node.op == "output":  # every head's logits, the main output first
            outputs = node.args[0] if isinstance(node.args[0], tuple) else (node.args[0],)
            step = Step("output", "output", None, tuple(index[arg] for arg in outputs))
        elif node.op == "call_module":
            module = modules[node.target]
            name = node.target.removeprefix("model.")
            kind = _kind(module)
            if isinstance(module, (Upsample, FixedBilinearDeconv, Crop)):
                feeds = feeds[:1]  # a second input only gives the size
            if kind == "unsupported":
                raise ModelError(f"cannot prune through layer '{name}' ({type(module).__name__}): its effect on "
                                 f"channels is unknown")
            step = Step(kind, name, module, feeds)
        elif node.op == "call_function" and node.target in PER_CHANNEL_FUNCTIONS:
            step = Step("per_channel", node.name, None, feeds[:1])
        elif node.op == "call_function" and node.target in (operator.add, operator.iadd):
            step = Step("add", node.name, None, feeds)
        else:
            target = getattr(node.target, "__name__", node.target)
            raise ModelError(f"cannot prune through '{node.name}' ({node.op} {target}): its effect on channels is "
                             f"unknown")
        index[node] = len(steps)
        steps.append(step)
    return steps
