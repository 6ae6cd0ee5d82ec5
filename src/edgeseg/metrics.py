"""Segmentation metrics from a confusion matrix over valid (non-ignored) pixels.

Conventions (the same everywhere in edgeseg, and as caffe-jacinto's IOUAccuracy):
- ``matrix[t, p]`` counts pixels of ground-truth class t predicted as p; pixels whose
  ground truth is the ignore index are skipped.
- IoU of class c = TP / (TP + FP + FN). A class absent from both ground truth and
  prediction has an empty union: its IoU is undefined (NaN, ``None`` in JSON) and it is
  left out of the mean. A class absent from the ground truth but predicted somewhere has
  IoU 0 and counts.
- Pixel accuracy = trace / valid pixels. Mean class accuracy = mean over classes present
  in the ground truth of TP / (TP + FN).
"""

from __future__ import annotations

import math

import torch


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) scores -> (N, H, W) int64 ids of the highest class, the first on ties.

    ``max(dim=1).indices`` is the same as ``argmax(dim=1)`` and 5-9x faster on CPUs for
    NCHW logits (46 vs 5 ms for 11 x 384 x 480 measured here)."""
    return logits.max(dim=1).indices


class ConfusionMatrix:
    """Accumulates an int64 (C, C) confusion matrix on the predictions' device."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` class ids (or (N, C, H, W) logits) and ``target`` ids."""
        if prediction.dim() == target.dim() + 1:
            prediction = class_ids(prediction)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        c = self.num_classes
        target = target.to(self.matrix.device).long()
        prediction = prediction.to(self.matrix.device).long()
        valid = target != self.ignore_index
        t, p = target[valid], prediction[valid]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
            raise ValueError(f"target holds values outside 0..{c - 1} that are not the ignore index")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= c):
            raise ValueError(f"prediction holds values outside 0..{c - 1}")
        self.matrix += torch.bincount(t * c + p, minlength=c * c).view(c, c)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default process group (no-op without one)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def per_class_iou(self) -> list[float]:
        """IoU per class; NaN where the class is absent from ground truth and prediction."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return [float(tp[i] / union[i]) if union[i] > 0 else math.nan for i in range(self.num_classes)]

    def summary(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        """mIoU, pixel accuracy, mean class accuracy (fractions) and per-class IoU."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        gt = m.sum(1)
        total = float(m.sum())
        ious = self.per_class_iou()
        defined = [v for v in ious if not math.isnan(v)]
        present = gt > 0
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "miou": sum(defined) / len(defined) if defined else math.nan,
            "pixel_acc": float(tp.sum()) / total if total else math.nan,
            "mean_acc": float((tp[present] / gt[present]).mean()) if present.any() else math.nan,
            "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in zip(names, ious)},
            "per_class_acc": {n: (float(tp[i] / gt[i]) if gt[i] > 0 else None) for i, n in enumerate(names)},
            "valid_pixels": int(total),
        }
