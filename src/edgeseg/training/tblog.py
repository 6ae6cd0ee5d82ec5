"""TensorBoard logging for a run (rank 0 only): loss, lr, mIoU, per-class IoU, and a few
validation overlays (input | prediction | ground truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeseg.data.transforms import EvalTransform


class TensorBoardLog:
    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, **values: float) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def evaluation(self, step: int, metrics: dict) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("val/miou", metrics["miou"], step)
        self.writer.add_scalar("val/pixel_acc", metrics["pixel_acc"], step)
        self.writer.add_scalar("val/mean_acc", metrics["mean_acc"], step)
        for name, iou in metrics["per_class_iou"].items():
            if iou is not None:
                self.writer.add_scalar(f"val_iou/{name}", iou, step)

    @torch.no_grad()
    def overlays(self, step: int, predictor, dataset, count: int = 3) -> None:
        """Input, prediction and ground truth side by side for the first ``count`` images."""
        if self.writer is None:
            return
        lut = predictor.classes.colour_lut()
        normalize = EvalTransform(predictor.config.mean, predictor.config.std)
        for index in range(min(count, len(dataset))):
            image, label = dataset.load(index)
            tensor, _ = normalize(image, label)
            pred = predictor.labels(tensor[None])[0].cpu().numpy().astype(np.uint8)
            panel = np.concatenate([image, lut[pred], lut[label]], axis=1)
            self.writer.add_image(f"val/{dataset.sample_name(index)}", panel, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
