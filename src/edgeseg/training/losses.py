"""Pixel-wise training losses: cross-entropy over every labelled pixel, or over the hardest."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from edgeseg.errors import ConfigError


class HardPixelCrossEntropy(torch.nn.Module):
    """Cross-entropy over the hard pixels of a batch (online hard example mining, as BiSeNet
    and ICNet train): the labelled pixels whose true-class probability is below ``threshold``,
    or, when fewer than ``min_kept`` (a fraction of the labelled pixels) are that hard, that
    fraction with the largest loss. Hardness is judged on the unweighted loss; class weights
    then weigh each kept pixel, and the mean is taken over the kept pixels' weights, as
    PyTorch's weighted cross-entropy does over all pixels. With ``label_smoothing`` the kept
    pixels' loss is the smoothed one, weighed by the true class's weight (PyTorch's weighted
    smoothing weighs each class's share by that class's weight); hardness stays the true
    class's probability."""

    def __init__(self, weight: torch.Tensor | None, ignore_index: int, threshold: float, min_kept: float,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index
        self.max_hard_loss = -math.log(threshold)
        self.min_kept = min_kept
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), 1)
        labelled = labels != self.ignore_index
        true_class = labels.masked_fill(~labelled, 0).unsqueeze(1)
        per_pixel = -log_p.gather(1, true_class).squeeze(1) * labelled
        kept = labelled & (per_pixel > self.max_hard_loss)
        wanted = int(self.min_kept * int(labelled.sum()))
        if int(kept.sum()) < wanted:
            candidates = per_pixel.detach().masked_fill(~labelled, -1.0).flatten()
            largest = torch.topk(candidates, wanted, sorted=False).indices
            kept = torch.zeros_like(kept).flatten().index_fill_(0, largest, True).view_as(kept)
        pixel_weight = kept.to(per_pixel.dtype)
        if self.label_smoothing:  # hardness was judged above; the kept pixels learn smoothed targets
            per_pixel = (1 - self.label_smoothing) * per_pixel - self.label_smoothing * log_p.mean(1) * labelled
        if self.weight is not None:
            pixel_weight = pixel_weight * self.weight[true_class.squeeze(1)]
        return (per_pixel * pixel_weight).sum() / pixel_weight.sum().clamp_min(1e-12)


def pixel_loss(weight: torch.Tensor | None, ignore_index: int, ohem_threshold: float | None,
               ohem_min_kept: float, label_smoothing: float = 0.0) -> torch.nn.Module:
    """Weighted cross-entropy (towards smoothed targets when ``label_smoothing`` > 0),
    restricted to hard pixels when ``ohem_threshold`` is set."""
    if ohem_threshold is None:
        return torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)
    return HardPixelCrossEntropy(weight, ignore_index, ohem_threshold, ohem_min_kept, label_smoothing)


def head_weights(model: torch.nn.Module, chosen: dict[str, float] | None) -> dict[str, float]:
    """The loss weight of each output head: the architecture's defaults, overridden by
    ``chosen`` (``loss.head_weights``); a head the model does not have is a ConfigError."""
    defaults = dict(getattr(model, "head_weights", {"main": 1.0}))
    for name in chosen or {}:
        if name not in defaults:
            raise ConfigError(f"loss.head_weights: '{name}' is no output head of this model (it has "
                              f"{', '.join(defaults)})")
    return {**defaults, **(chosen or {})}


def head_loss(criterion, logits: torch.Tensor, labels: torch.Tensor, lean: bool = False) -> torch.Tensor:
    """``criterion`` on ``logits`` upsampled (bilinear) to the labels when coarser. ``lean``
    (memory_saving) keeps only ``logits`` for the backward pass and computes the upsampled
    logits and their log-softmax again there: at full resolution those are the largest tensors
    of a step."""
    def term(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return criterion(logits, labels)

    if lean and torch.is_grad_enabled() and logits.requires_grad:
        return checkpoint(term, logits, use_reentrant=False)
    return term(logits)


def multi_head_loss(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion,
                    weights: dict[str, float], lean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of ``head_loss`` over the heads of ``net(images, heads=True)``, and the
    main head's logits. Heads of weight 0 still join the sum (times 0) so that every parameter
    takes part in the step, as DDP requires."""
    outputs = net(images, heads=True)
    total = None
    for name, logits in outputs.items():
        term = weights[name] * head_loss(criterion, logits, labels, lean)
        total = term if total is None else total + term
    return total, outputs["main"]
