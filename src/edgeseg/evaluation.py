"""Evaluation of a predictor on a dataset split at full resolution."""

from __future__ import annotations

import copy

import torch
from torch.utils.data import DataLoader, Subset

from edgeseg.data.dataset import SegmentationDataset
from edgeseg.data.transforms import EvalTransform
from edgeseg.errors import DataError, EdgesegError
from edgeseg.metrics import ConfusionMatrix
from edgeseg.runtime import track


def stack_same_size(batch):
    """Collate for evaluation: images of one batch must share a size."""
    sizes = {tuple(image.shape[-2:]) for image, _ in batch}
    if len(sizes) > 1:
        raise DataError(f"images of different sizes in one batch ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); "
                        f"use --batch-size 1")
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def evaluate(predictor, dataset: SegmentationDataset, batch_size: int = 1, num_workers: int = 1,
             shard: tuple[int, int] = (0, 1)) -> dict:
    """mIoU, pixel and mean class accuracy, per-class IoU and the confusion matrix of
    ``predictor`` on ``dataset``.

    Guarantees: every pixel of every image is scored at the image's own resolution; ignore
    pixels never count; the class sets of model and data must agree in size. With
    ``shard=(rank, world_size)`` each process scores every world_size-th image and the
    confusion matrices are summed across processes, so every rank gets the full result.
    ``confusion[t][p]`` counts the valid pixels of true class t predicted as p, in class order.
    """
    if dataset.classes.num_classes != predictor.classes.num_classes:
        raise EdgesegError(f"model predicts {predictor.classes.num_classes} classes but the dataset has "
                           f"{dataset.classes.num_classes}")
    if len(dataset) == 0:
        raise DataError(f"split '{dataset.split}' has no images")
    dataset = copy.copy(dataset)  # the caller's dataset keeps its own transform
    dataset.transform = EvalTransform(predictor.config.mean, predictor.config.std)
    rank, world_size = shard
    images = dataset if world_size == 1 else Subset(dataset, list(range(rank, len(dataset), world_size)))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=stack_same_size, pin_memory=predictor.device.type == "cuda")
    confusion = ConfusionMatrix(predictor.classes.num_classes, dataset.classes.ignore_index, predictor.device)
    batches = (len(images) + batch_size - 1) // batch_size
    for images, labels in track(loader, batches, f"eval {dataset.split}"):
        confusion.update(predictor.labels(images), labels.to(predictor.device))
    if world_size > 1:
        confusion.all_reduce()
    result = confusion.summary(predictor.classes.names)
    result["confusion"] = confusion.matrix.cpu().tolist()
    result.update(num_images=len(dataset), split=dataset.split)
    return result
