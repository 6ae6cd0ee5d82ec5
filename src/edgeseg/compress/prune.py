"""Filter pruning (ICNet's compress.py, generalised to every edgeseg architecture).

Channels are followed through the model's graph (``models.channel_graph``) as *units*: a
unit is a set of channel positions that must go together. A conv makes one unit per output
filter; an ``Add`` merges its inputs' units position by position (one shared index set per
add group); a ``Concat`` lines its parts' units up (each part sliced on its own); depth-wise
convs, BatchNorms, activations, pooling and resizing pass units through; space-to-depth
repeats each unit over its block, depth-to-space merges each block's units into one; a
grouped conv ties position i of every group (so every group keeps as many channels). The
image's channels and the channels that reach the output (the classifier's) are fixed.

Selection: each conv's filter importance (L1 norm as in compress.py, or L2, or |BN scale|),
divided by the layer's mean so that layers can be compared where they meet. A unit merged by
an ``Add`` takes the importance of its last input, the shortcut (ICNet: convs adding into a
shortcut reuse the shortcut's indices); bundles (groups, depth-to-space) sum theirs. Units
that share a layer form a scope; each scope keeps int(n x keep) of its prunable units (at
least 1), the most important ones, plus its fixed units and those of ``skip``-ped convs.

Soft pruning zeroes a removed unit everywhere it lives: its filters' weights and biases, and
the scale and shift of every BatchNorm or affine on it, so the channel is exactly zero after
any activation (ReLU, ReLU6, PReLU and hardswish all map 0 to 0) and contributes nothing
downstream. Hard pruning is soft pruning followed by removing those channels, so the hard
model computes what the soft one does, up to float rounding.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeseg.compress.specs import PruneConfig
from edgeseg.errors import ConfigError, ModelError
from edgeseg.fileio import atomic_write_bytes, mark_png
from edgeseg.models.blocks import ConvBNAct, FixedBilinearDeconv
from edgeseg.models.channel_graph import Step, channel_steps
from edgeseg.models.folded import ChannelAffine
from edgeseg.models.model_dir import load_model_dir, save_model_dir
from edgeseg.models.profile import profile_model
from edgeseg.models.pruned import conv_widths, is_depthwise, resized_conv, set_module
from edgeseg.models.stride import round_up
from edgeseg.plots import filter_cutoffs


class Units:
    """Union-find over channel units, each with an importance (None: no filter of its own) and
    a scope (union-find too: the layers whose units meet)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.score: list[float | None] = []
        self.fixed: list[bool] = []
        self.scope: list[int] = []
        self.scope_parent: dict[int, int] = {}

    def new(self, score: float | None, scope: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.score.append(score)
        self.fixed.append(fixed)
        self.scope.append(scope)
        self.scope_parent.setdefault(scope, scope)
        return len(self.parent) - 1

    def find(self, unit: int) -> int:
        while self.parent[unit] != unit:
            self.parent[unit] = self.parent[self.parent[unit]]
            unit = self.parent[unit]
        return unit

    def find_scope(self, scope: int) -> int:
        while self.scope_parent[scope] != scope:
            scope = self.scope_parent[scope]
        return scope

    def union(self, a: int, b: int, combine: str) -> int:
        """Merge the units of ``a`` and ``b``; ``combine`` 'prefer_b' keeps b's importance when
        it has one, 'sum' adds them."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        sa, sb = self.score[a], self.score[b]
        if combine == "sum" and sa is not None and sb is not None:
            score = sa + sb
        else:
            score = sb if sb is not None else sa
        self.parent[a] = b
        self.score[b] = score
        self.fixed[b] = self.fixed[a] or self.fixed[b]
        scope_a, scope_b = self.find_scope(self.scope[a]), self.find_scope(self.scope[b])
        self.scope_parent[scope_a] = scope_b
        return b


@dataclass(frozen=True)
class Scope:
    """The units of layers that meet (an add group, a concat's parts stay apart): ``fixed`` ones
    always stay, ``ranked`` ones are kept most important first."""

    fixed: list[int]
    ranked: list[int]


@dataclass
class PrunePlan:
    """What pruning decided: per step the units of its output, the scopes (named after their
    first conv in forward order), which units stay, and each prunable conv's raw filter
    importance with the filters kept (for the plot)."""

    steps: list[Step]
    outputs: list[list[int]]
    units: Units
    scopes: dict[str, Scope]
    kept: set[int]
    importance: dict[str, tuple[list[float], list[bool]]]

    def keeps(self, units: list[int]) -> torch.Tensor:
        return torch.tensor([self.units.find(u) in self.kept for u in units], dtype=torch.bool)


def kept_units(scopes: dict[str, Scope], keep: float, keeps: dict[str, float] | None = None,
               multiple: int = 1) -> set[int]:
    """Each scope keeps its fixed units and int(n x keep) of its ranked ones (at least 1), with
    ``keeps`` giving some scopes a keep of their own; ``multiple`` > 1 rounds each count to the
    nearest multiple (at least one, at most n), the channel counts CPU kernels run fastest."""
    keeps = keeps or {}
    unknown = sorted(set(keeps) - set(scopes))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(scopes), n=1)
        raise ConfigError(f"keeps: '{unknown[0]}' is no prunable layer group of this model"
                          + (f" (did you mean '{close[0]}'?)" if close else ""))
    kept: set[int] = set()
    for key, scope in scopes.items():
        ratio = keeps.get(key, keep)
        kept.update(scope.fixed)
        if scope.ranked:
            count = max(1, int(len(scope.ranked) * ratio))
            if multiple > 1 and ratio < 1:
                count = min(len(scope.ranked), max(multiple, round(count / multiple) * multiple))
            kept.update(scope.ranked[:count])
    return kept


def filter_importance(block: ConvBNAct, criterion: str) -> torch.Tensor:
    """One number per output filter of ``block``: the L1 or L2 norm of its weights, or the
    magnitude of its BatchNorm scale (L1 where the block has no BatchNorm)."""
    weight = block.conv.weight.detach().float().flatten(1)
    if criterion == "bn-scale" and isinstance(block.bn, nn.BatchNorm2d) and block.bn.weight is not None:
        return block.bn.weight.detach().float().abs()
    if criterion == "l2":
        return weight.norm(dim=1)
    return weight.abs().sum(dim=1)


def skipped_convs(model: nn.Module, patterns: list[str]) -> set[str]:
    """Conv names matched by ``patterns`` (globs, or a block name covering its convs); an
    unmatched pattern is a one-line ConfigError with a suggestion."""
    names = list(conv_widths(model))
    found: set[str] = set()
    for pattern in patterns:
        matched = {n for n in names if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern.rstrip(".") + ".")}
        if not matched:
            prefixes = sorted({".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)})
            close = difflib.get_close_matches(pattern, prefixes, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"skip: '{pattern}' matches no conv ({hint}see 'edgeseg info MODEL' for the names)")
        found |= matched
    return found


def plan_pruning(model: nn.Module, keep: float, criterion: str = "l1", skip: set[str] = frozenset(),
                 keeps: dict[str, float] | None = None, multiple: int = 1) -> PrunePlan:
    """Follow the channels of ``model`` and choose the units to keep (see the module doc);
    ``keeps`` gives named scopes (``PrunePlan.scopes``) their own keep ratio."""
    steps = channel_steps(model)
    stateful = [step.name for step in steps if step.module is not None and any(True for _ in step.module.parameters())]
    twice = next((name for name in stateful if stateful.count(name) > 1), None)
    if twice is not None:
        raise ModelError(f"cannot prune '{twice}': a layer with weights used more than once in the forward pass")
    units = Units()
    outputs: list[list[int]] = []
    importance: dict[str, torch.Tensor] = {}
    for index, step in enumerate(steps):
        ins = [outputs[i] for i in step.inputs]
        if step.kind == "input":
            out = [units.new(None, -1, fixed=True) for _ in range(3)]
        elif step.kind == "conv":
            out = _conv_units(units, index, step, ins[0], criterion, skip, importance)
        elif step.kind == "add":
            out = list(ins[0])
            for other in ins[1:]:
                out = [units.union(a, b, "prefer_b") for a, b in zip(out, other)]
        elif step.kind == "concat":
            out = [u for part in ins for u in part]
        elif step.kind == "space_to_depth":
            out = [u for u in ins[0] for _ in range(step.module.block ** 2)]
        elif step.kind == "depth_to_space":
            area = step.module.block ** 2
            out = []
            for start in range(0, len(ins[0]), area):
                root = ins[0][start]
                for u in ins[0][start + 1:start + area]:
                    root = units.union(root, u, "sum")
                out.append(root)
        else:  # per_channel, output
            out = list(ins[0])
        outputs.append(out)
    for head in steps[-1].inputs:  # every head's classes stay
        for unit in outputs[head]:
            units.fixed[units.find(unit)] = True
    scopes = _scopes(units, steps, outputs)
    plan = PrunePlan(steps, outputs, units, scopes, kept_units(scopes, keep, keeps, multiple), {})
    for index, step in enumerate(steps):
        if step.kind == "conv" and step.name in importance:
            plan.importance[step.name] = (importance[step.name].tolist(), plan.keeps(outputs[index]).tolist())
    return plan


def _conv_units(units: Units, index: int, step: Step, ins: list[int], criterion: str, skip: set[str],
                importance: dict[str, torch.Tensor]) -> list[int]:
    conv = step.module.conv
    if is_depthwise(conv):
        if conv.out_channels != conv.in_channels:
            raise ModelError(f"cannot prune '{step.name}': a depth-wise conv with a channel multiplier")
        return list(ins)
    scores = filter_importance(step.module, criterion)
    importance[step.name] = scores
    normalised = (scores / scores.mean().clamp_min(1e-12)).tolist()
    fixed = f"{step.name}.conv" in skip
    out = [units.new(s, index, fixed) for s in normalised]
    groups = conv.groups
    if groups > 1:  # position i of every group goes together, in the input and the output
        for side, size in ((ins, conv.in_channels // groups), (out, conv.out_channels // groups)):
            for i in range(size):
                for g in range(1, groups):
                    units.union(side[i], side[g * size + i], "sum")
    return out


def _scopes(units: Units, steps: list[Step], outputs: list[list[int]]) -> dict[str, Scope]:
    members: dict[int, list[int]] = {}
    for unit in range(len(units.parent)):
        if units.find(unit) == unit:
            members.setdefault(units.find_scope(units.scope[unit]), []).append(unit)
    names: dict[int, str] = {}
    for step, out in zip(steps, outputs):
        if step.kind == "conv" and out:
            names.setdefault(units.find_scope(units.scope[units.find(out[0])]), step.name)
    scopes: dict[str, Scope] = {}
    for scope, roots in members.items():
        ranked = [u for u in roots if not units.fixed[u] and units.score[u] is not None]
        fixed = [u for u in roots if units.fixed[u] or units.score[u] is None]
        scopes[names.get(scope, "input")] = Scope(fixed, sorted(ranked, key=lambda u: -units.score[u]))
    return scopes


@torch.no_grad()
def soft_prune(plan: PrunePlan) -> int:
    """Zero every removed unit in the model ``plan`` was made for (filters, biases, BatchNorm and affine scale and
    shift on it); returns the number of conv filters zeroed."""
    zeroed = 0
    for step, out in zip(plan.steps, plan.outputs):
        if step.kind not in ("conv", "per_channel") or step.module is None:
            continue
        gone = ~plan.keeps(out)
        if not gone.any():
            continue
        if step.kind == "conv":
            block = step.module
            block.conv.weight[gone] = 0
            if block.conv.bias is not None:
                block.conv.bias[gone] = 0
            if not is_depthwise(block.conv):
                zeroed += int(gone.sum())
            _zero_affine(block.bn, gone)
        else:
            _zero_affine(step.module, gone)
    return zeroed


def _zero_affine(module: nn.Module, gone: torch.Tensor) -> None:
    if isinstance(module, nn.BatchNorm2d):
        module.weight[gone] = 0
        module.bias[gone] = 0
    elif isinstance(module, ChannelAffine):
        module.scale[gone] = 0
        module.shift[gone] = 0


@torch.no_grad()
def hard_prune(model: nn.Module, plan: PrunePlan) -> dict[str, int]:
    """Soft-prune ``model`` (the one ``plan`` was made for), then remove the zeroed channels from
    every module that holds them; returns the new widths (conv name -> output channels) of the
    convs that changed."""
    soft_prune(plan)
    before = conv_widths(model)
    for step, out in zip(plan.steps, plan.outputs):
        ins = [plan.outputs[i] for i in step.inputs]
        if step.kind == "conv":
            _slice_block(step, plan.keeps(ins[0]), plan.keeps(out))
        elif step.kind == "per_channel" and step.module is not None:
            sliced = _sliced_per_channel(step.module, plan.keeps(out))
            if sliced is not step.module:
                set_module(model, step.name, sliced)
    after = {name: model.get_submodule(name).out_channels for name in before}
    return {name: width for name, width in after.items() if width != before[name]}


def _slice_block(step: Step, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
    block, conv = step.module, step.module.conv
    if keep_in.all() and keep_out.all():
        return
    weight = conv.weight
    if is_depthwise(conv):
        groups = int(keep_out.sum())
        weight = weight[keep_out]
    elif conv.groups == 1:
        groups = 1
        weight = weight[keep_out][:, keep_in]
    else:
        groups = conv.groups
        in_groups = keep_in.view(groups, -1)
        out_groups = keep_out.view(groups, -1)
        if len(set(in_groups.sum(1).tolist())) > 1 or len(set(out_groups.sum(1).tolist())) > 1:
            raise ModelError(f"cannot prune '{step.name}': its {groups} groups would keep different numbers of "
                             f"channels")
        per_group = weight.view(groups, -1, *weight.shape[1:])
        weight = torch.cat([per_group[g][out_groups[g]][:, in_groups[g]] for g in range(groups)])
    new = resized_conv(conv, int(keep_in.sum()), int(keep_out.sum()), groups)
    new.weight = nn.Parameter(weight.contiguous())
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias[keep_out].contiguous())
    block.conv = new
    block.bn = _sliced_per_channel(block.bn, keep_out)
    block.act = _sliced_per_channel(block.act, keep_out)


def _sliced_per_channel(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    if keep.all():
        return module
    if isinstance(module, FixedBilinearDeconv):
        return module.with_channels(int(keep.sum()))
    if isinstance(module, nn.PReLU) and module.num_parameters == 1:
        return module
    if isinstance(module, (nn.BatchNorm2d, nn.PReLU, ChannelAffine)):
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.dim() == 1 and tensor.numel() == keep.numel():
                sliced = tensor[keep].contiguous()
                setattr(module, name, nn.Parameter(sliced) if isinstance(tensor, nn.Parameter) else sliced)
        if isinstance(module, nn.BatchNorm2d):
            module.num_features = int(keep.sum())
        if isinstance(module, nn.PReLU):
            module.num_parameters = int(keep.sum())
    return module


@dataclass(frozen=True)
class PrunedLayer:
    """One conv before and after pruning (after: as the hard-pruned model has it)."""

    name: str
    channels_before: int
    channels_after: int
    macs_before: int
    macs_after: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prune_model_dir(source, out, config: PruneConfig, keeps: dict[str, float] | None = None
                    ) -> tuple[list[PrunedLayer], dict, PrunePlan]:
    """The prune stage: model directory in, pruned model directory out (``config.soft``: same
    shapes, removed units zeroed; else narrower, its widths in config.json); ``keeps``: a keep
    ratio per layer group (a target's allocation), the rest whole. Returns a row per conv, the
    metrics recorded in the model's history (params and MACs before and after; for a soft cut,
    after is what committing it would give) and the plan (for the plot)."""
    loaded = load_model_dir(source)
    model, model_config = loaded.model, loaded.config
    if model_config.quantization is not None:
        raise ModelError(f"{source}: the model is quantized ({model_config.quantization.spec.scheme}); prune the "
                         f"float model, then quantize")
    if config.criterion == "bn-scale" and model_config.batchnorm_folded:
        raise ConfigError(f"criterion: bn-scale needs BatchNorms, and {source} has them folded; use l1 or l2")
    skip = skipped_convs(model, config.skip)
    size = round_up(model_config.input_size, model_config.output_stride)
    before = profile_model(model, size)
    plan = plan_pruning(model, 1.0 if keeps is not None else config.keep, config.criterion, skip, keeps,
                        config.channel_multiple)
    hard, hard_plan = copy.deepcopy((model, plan))
    changed = hard_prune(hard, hard_plan)
    after = profile_model(hard, size)
    after_layers = {layer.name: layer for layer in after.layers}
    rows = [PrunedLayer(layer.name, layer.out_channels, after_layers[layer.name].out_channels, layer.macs,
                        after_layers[layer.name].macs) for layer in before.layers]
    metrics = {"stage": "prune", **config.model_dump(exclude=set() if keeps is not None else
                                                     {"target_macs", "target_latency_ms", "scan_ratios",
                                                      "scan_images"}),
               "params_before": before.params, "params_after": after.params, "macs_before": before.macs,
               "macs_after": after.macs, "layers_pruned": len(changed), "input_size": list(size)}
    if keeps is not None:
        metrics["keeps"] = dict(keeps)
    if config.soft:
        metrics["filters_zeroed"] = soft_prune(plan)
        save_model_dir(model, model_config.with_stage(metrics), out)
    else:
        widths = {**model_config.widths, **changed}
        save_model_dir(hard, model_config.with_stage(metrics, widths=widths), out)
    return rows, metrics, plan


def plot_model_dir(source, config: PruneConfig, path, keeps: dict[str, float] | None = None) -> Path:
    """Write the PNG of ``edgeseg prune --plot``: per layer of the model directory ``source``,
    its sorted filter importances and the cut-off ``config`` (or the per-group ``keeps``) makes
    (planning is deterministic, so this is the choice the prune stage made)."""
    model = load_model_dir(source).model
    plan = plan_pruning(model, 1.0 if keeps is not None else config.keep, config.criterion,
                        skipped_convs(model, config.skip), keeps, config.channel_multiple)
    how = "keep per layer group from the scan" if keeps is not None else f"keep {config.keep}"
    picture = filter_cutoffs(plan.importance, f"{source}: {how} ({config.criterion}); dark: kept")
    return atomic_write_bytes(Path(path), mark_png(picture, "prune"))
