"""Pixel-wise training losses: cross-entropy over every labelled pixel, or over the hardest."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class HardPixelCrossEntropy(torch.nn.Module):
    """Cross-entropy over the hard pixels of a batch (online hard example mining, as BiSeNet
    and ICNet train): the labelled pixels whose true-class probability is below ``threshold``,
    or, when fewer than ``min_kept`` (a fraction of the labelled pixels) are that hard, that
    fraction with the largest loss. Hardness is judged on the unweighted loss; class weights
    then weigh each kept pixel, and the mean is taken over the kept pixels' weights, as
    PyTorch's weighted cross-entropy does over all pixels."""

    def __init__(self, weight: torch.Tensor | None, ignore_index: int, threshold: float, min_kept: float):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index
        self.max_hard_loss = -math.log(threshold)
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="none")
        labelled = labels != self.ignore_index
        kept = labelled & (per_pixel > self.max_hard_loss)
        wanted = int(self.min_kept * int(labelled.sum()))
        if int(kept.sum()) < wanted:
            candidates = per_pixel.detach().masked_fill(~labelled, -1.0).flatten()
            largest = torch.topk(candidates, wanted, sorted=False).indices
            kept = torch.zeros_like(kept).flatten().index_fill_(0, largest, True).view_as(kept)
        pixel_weight = kept.to(per_pixel.dtype)
        if self.weight is not None:
            pixel_weight = pixel_weight * self.weight[labels.masked_fill(~labelled, 0)]
        return (per_pixel * pixel_weight).sum() / pixel_weight.sum().clamp_min(1e-12)


def pixel_loss(weight: torch.Tensor | None, ignore_index: int, ohem_threshold: float | None,
               ohem_min_kept: float) -> torch.nn.Module:
    """Weighted cross-entropy, restricted to hard pixels when ``ohem_threshold`` is set."""
    if ohem_threshold is None:
        return torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    return HardPixelCrossEntropy(weight, ignore_index, ohem_threshold, ohem_min_kept)
