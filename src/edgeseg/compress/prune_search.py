"""Accuracy-driven filter pruning: a per-layer sensitivity scan and the keep ratios that meet a
MACs or latency target with the least predicted loss.

The scan cuts one scope (``PrunePlan.scopes``: the layers whose channels meet) at a time, at
each of a few keep ratios, with every other layer whole, and scores val mIoU on a fixed set
of images (soft pruning, so nothing is rebuilt). A scope's predicted loss at a keep ratio is
read off its scan by linear interpolation (no loss at keep 1), made monotone (cutting more
never predicts less loss) and clipped at zero; the losses of scopes are assumed to add up.

The allocation is greedy: from the whole model, repeatedly lower the keep of the scope
whose next step down (on a grid of 1/8 steps and the scanned ratios) costs the least
predicted loss per MAC saved, until the target is met. MACs come from the dense profile
scaled by the kept input and output channels of every conv, so the search needs no forward
pass; ``estimate_macs`` is exact for what ``hard_prune`` builds (tested). A latency target
walks the same path and measures (binary search over it, the caller's timer).
"""

from __future__ import annotations

import bisect
import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgeseg.compress.prune import PrunePlan, hard_prune, kept_units, plan_pruning, soft_prune
from edgeseg.errors import ConfigError
from edgeseg.metrics import ConfusionMatrix
from edgeseg.models.model_dir import ModelConfig
from edgeseg.models.profile import ModelProfile
from edgeseg.predict.predictors import TorchPredictor

GRID_STEP = 0.125


@dataclass
class Sensitivity:
    """The scan: the subset's mIoU with nothing cut, and per scope its mIoU at each ratio."""

    base_miou: float
    ratios: list[float]
    miou: dict[str, list[float]]
    images: int
    fingerprint: str = ""

    def loss(self, scope: str, keep: float) -> float:
        """Predicted mIoU loss (a fraction) of cutting ``scope`` alone to ``keep``."""
        if scope not in self.miou or keep >= 1:
            return 0.0
        points = sorted(zip(self.ratios, (self.base_miou - m for m in self.miou[scope])), reverse=True)
        worst, monotone = 0.0, [(1.0, 0.0)]
        for ratio, loss in points:  # from keep 1 down: never less loss than at a larger keep
            worst = max(worst, loss)
            monotone.append((ratio, worst))
        ratios = [r for r, _ in reversed(monotone)]
        losses = [l for _, l in reversed(monotone)]
        if keep <= ratios[0]:
            return losses[0]
        i = bisect.bisect_left(ratios, keep)
        r0, r1, l0, l1 = ratios[i - 1], ratios[i], losses[i - 1], losses[i]
        return l0 + (l1 - l0) * (keep - r0) / (r1 - r0)

    def as_dict(self) -> dict:
        return asdict(self)


def scope_sizes(plan: PrunePlan) -> dict[str, int]:
    """The scopes a search can cut (more than one prunable unit) and their unit counts."""
    return {key: len(scope.ranked) for key, scope in plan.scopes.items() if len(scope.ranked) > 1}


@torch.no_grad()
def subset_miou(model: nn.Module, config: ModelConfig, images: list[tuple[torch.Tensor, torch.Tensor]],
                batch_size: int = 4) -> float:
    """mIoU of ``model`` over (normalised image, label) pairs, scored as one set."""
    predictor = TorchPredictor(model.eval(), config, torch.device("cpu"))
    confusion = ConfusionMatrix(config.num_classes)
    by_size: dict[tuple[int, int], list] = {}
    for pair in images:
        by_size.setdefault(tuple(pair[0].shape[-2:]), []).append(pair)
    for pairs in by_size.values():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            confusion.update(predictor.labels(torch.stack([image for image, _ in batch])),
                             torch.stack([label for _, label in batch]))
    return float(confusion.summary()["miou"])


def scan_sensitivity(model: nn.Module, config: ModelConfig, images: list, ratios: list[float], criterion: str,
                     skip: set[str], log: Callable[[str], None] = print, multiple: int = 1) -> Sensitivity:
    """Cut each scope alone to each ratio (soft, so shapes stay) and score the subset."""
    model = copy.deepcopy(model).eval()
    plan = plan_pruning(model, 1.0, criterion, skip)
    sizes = scope_sizes(plan)
    whole = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    base = subset_miou(model, config, images)
    log(f"prune scan: {len(sizes)} layer groups x {len(ratios)} ratios on {len(images)} images "
        f"(uncut mIoU {100 * base:.2f} %)")
    scanned: dict[str, list[float]] = {}
    for number, key in enumerate(sizes, 1):
        scanned[key] = []
        for ratio in ratios:
            plan.kept = kept_units(plan.scopes, 1.0, {key: ratio}, multiple)
            soft_prune(plan)
            scanned[key].append(subset_miou(model, config, images))
            model.load_state_dict(whole)
        log(f"  {number}/{len(sizes)} {key}: " + ", ".join(
            f"keep {r:g}: {100 * m:.2f}" for r, m in zip(ratios, scanned[key])))
    return Sensitivity(base, list(ratios), scanned, len(images))


class MacsEstimate:
    """MACs of the model ``plan`` was made for under any per-scope keeps, from its dense
    profile: each conv's MACs scale with its kept output channels and (unless depth-wise, where
    the groups shrink with the channels) its kept input channels."""

    def __init__(self, plan: PrunePlan, dense: ModelProfile, multiple: int = 1) -> None:
        self.plan, self.multiple = plan, multiple
        self.dense = dense.macs
        roots = {}
        for step, out in zip(plan.steps, plan.outputs):
            ins = plan.outputs[step.inputs[0]] if step.inputs else []
            if step.kind == "conv":
                roots[f"{step.name}.conv"] = (out, None if step.module.conv.groups == len(out) else ins)
            elif step.kind == "per_channel" and step.module is not None:
                roots[step.name] = (out, None)
        self.layers = []
        for layer in dense.layers:
            out, ins = roots.get(layer.name, (None, None))
            find = plan.units.find
            self.layers.append((layer.macs, None if out is None else np.array([find(u) for u in out]),
                                None if ins is None else np.array([find(u) for u in ins])))
        self.size = len(plan.units.parent)

    def macs(self, keeps: dict[str, float]) -> int:
        mask = np.zeros(self.size, dtype=bool)
        mask[list(kept_units(self.plan.scopes, 1.0, keeps, self.multiple))] = True
        total = 0.0
        for macs, out, ins in self.layers:
            fraction = 1.0 if out is None else mask[out].mean()
            if ins is not None:
                fraction *= mask[ins].mean()
            total += macs * fraction
        return round(total)


@dataclass
class Allocation:
    """A per-scope keep ratio and what the search predicts of it."""

    keeps: dict[str, float]
    macs: int
    dense_macs: int
    predicted_loss: float
    path: list[tuple[int, float]] = field(default_factory=list)  # (MACs, predicted loss) per step

    @property
    def macs_fraction(self) -> float:
        return self.macs / self.dense_macs


def grid(ratios: list[float]) -> list[float]:
    """The keep levels a scope can take: 1, 7/8, ... down to the smallest scanned ratio, and the
    scanned ratios themselves; largest first."""
    lowest = min(ratios)
    levels = {1.0, *ratios}
    level = 1.0 - GRID_STEP
    while level > lowest + 1e-9:
        levels.add(round(level, 6))
        level -= GRID_STEP
    return sorted(levels, reverse=True)


def greedy_path(estimate: MacsEstimate, sensitivity: Sensitivity, sizes: dict[str, int],
                stop_at: int = 0) -> list[Allocation]:
    """Every allocation of the greedy descent, from the whole model down to ``stop_at`` MACs
    (or as far as the grid goes)."""
    levels = grid(sensitivity.ratios)
    position = {key: 0 for key in sizes}
    keeps: dict[str, float] = {}
    macs, loss = estimate.dense, 0.0
    path = [Allocation({}, macs, estimate.dense, 0.0)]
    while macs > stop_at:
        best = None
        for key in sizes:
            if position[key] + 1 >= len(levels):
                continue
            lower = levels[position[key] + 1]
            trial = estimate.macs({**keeps, key: lower})
            saved = macs - trial
            if saved <= 0:
                continue
            extra = sensitivity.loss(key, lower) - sensitivity.loss(key, keeps.get(key, 1.0))
            score = (extra / saved, -saved)
            if best is None or score < best[0]:
                best = (score, key, lower, trial, extra)
        if best is None:
            break
        _, key, lower, macs, extra = best
        position[key] += 1
        keeps = {**keeps, key: lower}
        loss += extra
        path.append(Allocation(keeps, macs, estimate.dense, loss))
    return path


def allocate_macs(estimate: MacsEstimate, sensitivity: Sensitivity, sizes: dict[str, int],
                  target: float) -> Allocation:
    """The greedy allocation at ``target`` x the dense MACs; unreachable: a one-line error."""
    goal = math.floor(target * estimate.dense)
    path = greedy_path(estimate, sensitivity, sizes, goal)
    if path[-1].macs > goal:
        raise ConfigError(f"target_macs: {target:g} is out of reach; cutting every layer to the smallest scanned "
                          f"ratio ({min(sensitivity.ratios):g}) leaves {path[-1].macs_fraction:.3f} of the MACs "
                          f"(add a smaller ratio to scan_ratios to go further)")
    chosen = path[-1]
    chosen.path = [(step.macs, step.predicted_loss) for step in path]
    return chosen


def allocate_latency(estimate: MacsEstimate, sensitivity: Sensitivity, sizes: dict[str, int], target_ms: float,
                     latency_of: Callable[[dict[str, float]], float],
                     log: Callable[[str], None] = print) -> tuple[Allocation, float]:
    """The first allocation of the greedy path whose measured latency is at most ``target_ms``
    (binary search over the path; latency falls with MACs up to timing noise)."""
    path = greedy_path(estimate, sensitivity, sizes)
    measured: dict[int, float] = {}

    def latency(index: int) -> float:
        if index not in measured:
            measured[index] = latency_of(path[index].keeps)
            log(f"  {path[index].macs_fraction:.3f} of the MACs: {measured[index]:.2f} ms")
        return measured[index]

    if latency(0) <= target_ms:
        chosen = 0
    elif latency(len(path) - 1) > target_ms:
        raise ConfigError(f"target_latency_ms: {target_ms:g} ms is out of reach; the most the scan's ratios allow "
                          f"({path[-1].macs_fraction:.3f} of the MACs) runs in {measured[len(path) - 1]:.2f} ms "
                          f"(the uncut model: {measured[0]:.2f} ms)")
    else:
        low, high = 0, len(path) - 1  # latency(low) > target >= latency(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if latency(middle) > target_ms else (low, middle)
        chosen = high
    allocation = path[chosen]
    allocation.path = [(step.macs, step.predicted_loss) for step in path]
    return allocation, measured[chosen]


def pruned_copy(model: nn.Module, criterion: str, skip: set[str], keeps: dict[str, float],
                multiple: int = 1) -> nn.Module:
    """A hard-pruned copy of ``model`` under per-scope ``keeps`` (the rest whole)."""
    pruned = copy.deepcopy(model)
    hard_prune(pruned, plan_pruning(pruned, 1.0, criterion, skip, keeps, multiple))
    return pruned
