"""The training loop: one function from a validated config to a run directory."""

from __future__ import annotations

import csv
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from edgeseg.data.doctor import PaletteCheck, check_split, class_weights
from edgeseg.data.spec import open_source
from edgeseg.data.transforms import EvalTransform, TrainTransform
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import evaluate
from edgeseg.fileio import atomic_write_text
from edgeseg.inference import TorchPredictor
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.runtime import resolve_device
from edgeseg.train.checkpoint import load_training_state, save_training_state
from edgeseg.train.config import TrainConfig
from edgeseg.train.schedules import lr_factor

CSV_FIELDS = ["epoch", "step", "lr", "train_loss", "val_miou", "val_pixel_acc", "epoch_seconds", "train_images_per_s"]


@dataclass
class RunResult:
    run_dir: Path
    best_miou: float
    last_metrics: dict | None


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-N for the first N that is free."""
    candidate, n = runs_dir / name, 1
    while candidate.exists():
        n += 1
        candidate = runs_dir / f"{name}-{n}"
    return candidate


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = config.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def loss_weights(config: TrainConfig, train_set, device) -> torch.Tensor | None:
    """Class weights for the loss, computed by the label doctor over the train split."""
    if config.loss.class_weights == "none":
        return None
    report = check_split(train_set, PaletteCheck(train_set.classes.num_classes))
    if report.problems:
        raise EdgesegError(report.problems[0])
    weights = class_weights(report, train_set.classes.num_classes)[config.loss.class_weights]
    return torch.tensor([w if w is not None else 0.0 for w in weights], dtype=torch.float32, device=device)


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def train(config: TrainConfig, resume_dir: Path | None = None, log=print) -> RunResult:
    """Train per ``config``; with ``resume_dir`` continue that run from its ``last/`` state.

    Guarantees: the run directory holds config.yaml (the resolved config), metrics.csv (one
    row per epoch), last/ (resumable state, replaced atomically each epoch) and best/ (a
    model directory, the epoch with the best val mIoU).
    """
    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    source = open_source(config.data.spec)
    classes = source.classes
    train_set = source.dataset(config.data.train_split, cache=config.data.cache,
                               transform=TrainTransform(config.augment, config.data.mean, config.data.std))
    val_set = source.dataset(config.data.val_split, cache=config.data.cache)
    if config.data.cache and config.data.num_workers > 0:
        train_set.preload()
    model = create_model(config.model.name, classes.num_classes, **config.model.args).to(device)
    optimizer = build_optimizer(config, model)
    criterion = torch.nn.CrossEntropyLoss(weight=loss_weights(config, train_set, device),
                                          ignore_index=classes.ignore_index)
    input_size = tuple(config.augment.crop) if config.augment.crop else val_set.read(0)[1].shape
    model_config = model_config_for(model, classes, input_size, config.data.mean, config.data.std,
                                    history=[{"stage": "train", "config": config.name}])

    run_dir = resume_dir or new_run_dir(config.runs_dir, config.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, step, best = 0, 0, -1.0
    rows: list[dict] = []
    if resume_dir is not None:
        progress = load_training_state(run_dir / "last", model, optimizer)
        start_epoch, step, best = progress["epoch"], progress["step"], progress["best_miou"]
        rows = read_metrics_csv(run_dir / "metrics.csv")[:start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch}")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    loader_generator = torch.Generator()
    steps_per_epoch = max(1, len(train_set) // config.batch_size)
    predictor = TorchPredictor(model, model_config, device)
    last_metrics = None
    for epoch in range(start_epoch, config.epochs):
        loader_generator.manual_seed(config.seed * 1000 + epoch)
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                            num_workers=config.data.num_workers, generator=loader_generator,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        model.train()
        started, total_loss, seen = time.perf_counter(), 0.0, 0
        for images, labels in loader:
            lr = config.optimizer.lr * lr_factor(config.schedule, step, steps_per_epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            total_loss += float(loss.detach()) * images.shape[0]
            seen += images.shape[0]
            step += 1
        seconds = time.perf_counter() - started
        row = {"epoch": epoch + 1, "step": step, "lr": f"{lr:.6g}", "train_loss": f"{total_loss / max(seen, 1):.5f}",
               "val_miou": "", "val_pixel_acc": "", "epoch_seconds": f"{seconds:.2f}",
               "train_images_per_s": f"{seen / seconds:.2f}"}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            model.eval()
            last_metrics = evaluate(predictor, val_set, num_workers=0)
            row.update(val_miou=f"{last_metrics['miou']:.5f}", val_pixel_acc=f"{last_metrics['pixel_acc']:.5f}")
            if last_metrics["miou"] > best:
                best = last_metrics["miou"]
                save_model_dir(model, model_config, run_dir / "best")
        rows.append(row)
        write_metrics_csv(run_dir / "metrics.csv", rows)
        save_training_state(run_dir / "last", model, optimizer, {"epoch": epoch + 1, "step": step, "best_miou": best})
        log(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']}  lr {row['lr']}  "
            f"val mIoU {row['val_miou'] or '-'}  ({seconds:.1f} s, {row['train_images_per_s']} img/s)")
    return RunResult(run_dir, best, last_metrics)
