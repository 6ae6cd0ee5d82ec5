"""The training loop: one function from a validated config to a run directory."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from edgeseg.compress.quant.graph import low_bit_layout
from edgeseg.models.quant_spec import QuantizationRecord
from edgeseg.models.quantized import attach_quantizers
from edgeseg.compress.sparsity import SparsityControl, conv_layers, zero_fractions
from edgeseg.data.dataset import split_parts
from edgeseg.data.doctor import PaletteCheck, check_split, class_weights
from edgeseg.data.spec import open_source, spec_record
from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize, TrainTransform
from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.evaluation import evaluate
from edgeseg.fileio import atomic_write_csv, atomic_write_text, read_csv_rows
from edgeseg.predict.predictors import TorchPredictor
from edgeseg.models import ModelConfig, create_model, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.model_dir import flush_subnormals_
from edgeseg.plots import write_run_pictures
from edgeseg.runtime import cpu_has_native_bfloat16, track
from edgeseg.training import distributed
from edgeseg.training.checkpoint import (clear_run_end, has_resumable_state, load_training_state, mark_run_end,
                                     recover_run_dir, save_periodic_checkpoint, save_training_state)
from edgeseg.training.config import TrainConfig
from edgeseg.training.distill import Distiller
from edgeseg.training.losses import head_loss, head_weights, multi_head_loss, pixel_loss
from edgeseg.training.memory_saving import enable_checkpointing, resolve_checkpoint_modules
from edgeseg.training.pretrained import describe_unmatched, load_pretrained
from edgeseg.training.schedules import lr_factor
from edgeseg.training.tblog import TensorBoardLog
from edgeseg.training.weight_average import WeightAverage
from edgeseg.layout import BEST_DIR, LAST_DIR, METRICS_CSV, RUN_CONFIG, TENSORBOARD_DIR

CSV_FIELDS = ["epoch", "step", "lr", "train_loss", "val_miou", "val_pixel_acc", "epoch_seconds", "train_images_per_s"]


@dataclass
class RunResult:
    run_dir: Path
    best_miou: float
    last_metrics: dict | None
    is_main: bool = True


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-N for the first N that is free."""
    candidate, n = runs_dir / name, 1
    while candidate.exists():
        n += 1
        candidate = runs_dir / f"{name}-{n}"
    return candidate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """One parameter group, or with ``sparsity_target`` one group per conv weight (named by
    its layer, so its lr multiplier can change) plus one for the rest."""
    o = config.optimizer
    decay = o.weight_decay if o.regularization == "l2" else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": params}]
    if config.sparsity.sparsity_target is not None:
        layers = conv_layers(model)
        own = {id(conv.weight) for conv in layers.values()}
        groups = [{"params": [conv.weight], "layer": name} for name, conv in layers.items()]
        groups.append({"params": [p for p in params if id(p) not in own]})
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=o.betas, weight_decay=decay)


def build_model(config: TrainConfig, classes, val_set) -> tuple[torch.nn.Module, ModelConfig]:
    """The model to train and the config.json its checkpoints get. With ``model.init_from``
    the model directory's architecture, arguments, folded-BN state and weights are taken as
    they are, and this run is appended to its history."""
    input_size = tuple(config.augment.crop) if config.augment.crop else tuple(val_set.read(0)[1].shape)
    stage = {"stage": "train", "config": config.name, "data": spec_record(config.data.spec)}
    channels = "gray" if getattr(val_set, "channels", "rgb") == "gray" else "rgb"
    if config.model.init_from is None:
        model = create_model(config.model.name, classes.num_classes, **config.model.args)
        mean, std = input_normalization(config, getattr(model, "input_normalization", None))
        model_config = model_config_for(model, classes, input_size, mean, std, [stage], channels)
        return attach_training_quantizers(config, model, model_config), model_config
    loaded = load_model_dir(config.model.init_from)
    if loaded.config.num_classes != classes.num_classes:
        raise ConfigError(f"model.init_from: {config.model.init_from} predicts {loaded.config.num_classes} classes "
                          f"but the dataset has {classes.num_classes}")
    mean, std = input_normalization(config, (loaded.config.mean, loaded.config.std))
    model_config = model_config_for(loaded.model, classes, loaded.config.input_size, mean, std,
                                    [*loaded.config.history, stage], channels)
    model_config.batchnorm_folded = loaded.config.batchnorm_folded
    model_config.quantization = loaded.config.quantization
    return attach_training_quantizers(config, loaded.model.train(), model_config), model_config


def input_normalization(config: TrainConfig, model_default) -> tuple[tuple, tuple]:
    """(mean, std) the inputs are normalised with: the config's where set, else ``model_default``
    (the starting model directory's, or the architecture's own), else ImageNet's."""
    default_mean, default_std = model_default or (IMAGENET_MEAN, IMAGENET_STD)
    return (tuple(config.data.mean or default_mean), tuple(config.data.std or default_std))


def check_crops(config: TrainConfig, stride: int) -> None:
    """Every crop size training will use is a multiple of the model's output stride."""
    crops = [("augment.crop", config.augment.crop)]
    crops += [(f"augment.phases[{i}].crop", phase.crop) for i, phase in enumerate(config.augment.phases)]
    for key, crop in crops:
        if crop is not None and (crop[0] % stride or crop[1] % stride):
            raise ConfigError(f"{key}: {crop[0]}x{crop[1]} is not a multiple of the model's output stride {stride}")


def attach_training_quantizers(config: TrainConfig, model: torch.nn.Module, model_config: ModelConfig):
    """With a ``quantize`` section, the low-bit scheme's quantizers on ``model`` (in place),
    recorded in ``model_config`` so every checkpoint rebuilds them."""
    quant = config.quantize
    if quant is None:
        return model
    if model_config.quantization is not None:
        raise ConfigError("quantize: model.init_from is already quantized")
    if quant.scheme != "low-bit":
        raise ConfigError(f"quantize.scheme: '{quant.scheme}' needs calibrated ranges before training; use "
                          f"'edgeseg quantize MODEL --epochs N' (only 'low-bit' trains quantized from scratch)")
    stride = model_config.output_stride
    size = tuple(-(-side // stride) * stride for side in model_config.input_size)
    points, follow, float_layers = low_bit_layout(model, size)
    attach_quantizers(model, quant, points, follow, float_layers)
    model_config.quantization = QuantizationRecord(spec=quant, points=points, follow=follow,
                                                   float_layers=float_layers)
    return model


def loss_weights(config: TrainConfig, train_set, device) -> torch.Tensor | None:
    """Class weights for the loss, computed by the label doctor over the train split."""
    if config.loss.class_weights == "none":
        return None
    report = check_split(train_set, PaletteCheck(train_set.classes.num_classes))
    if report.problems:
        raise EdgesegError(report.problems[0])
    weights = class_weights(report, train_set.classes.num_classes)[config.loss.class_weights]
    power = config.loss.class_weight_power
    return torch.tensor([w ** power if w is not None else 0.0 for w in weights], dtype=torch.float32, device=device)


def training_autocast(config: TrainConfig, cuda: bool):
    """A context factory for the forward pass: float16 autocast on CUDA (``amp``), bfloat16
    autocast on the CPU (``cpu_amp``), or none."""
    if cuda and config.amp:
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    if not cuda and cpu_bfloat16(config):
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def cpu_bfloat16(config: TrainConfig) -> bool:
    """Whether ``cpu_amp`` turns bfloat16 autocast on: as set, or with 'auto', where the CPU has it natively."""
    return cpu_has_native_bfloat16() if config.cpu_amp == "auto" else config.cpu_amp


def training_memory_format(config: TrainConfig, cuda: bool) -> torch.memory_format:
    """Channels-last where ``channels_last`` asks for it; unset, on CUDA only."""
    channels_last = cuda if config.channels_last is None else config.channels_last
    return torch.channels_last if channels_last else torch.contiguous_format


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    atomic_write_csv(path, rows, CSV_FIELDS)


def read_metrics_csv(path: Path) -> list[dict]:
    return read_csv_rows(path)


class TrainingDiverged(EdgesegError):
    """The loss or the weights became NaN or infinite; ``last/`` still holds the epoch before."""


def diverged(config: TrainConfig, run_dir: Path, process: distributed.Process, epoch: int, step: int,
             steps_per_epoch: int, what: str) -> None:
    """Record the divergence in config.yaml's history (so that ``--resume`` may lower the lr)
    and raise TrainingDiverged naming the epoch and step."""
    in_epoch = step - epoch * steps_per_epoch + 1
    resumable = has_resumable_state(run_dir)
    if process.is_main and resumable:
        event = {"diverged": {"epoch": epoch + 1, "step": in_epoch, "global_step": step + 1, "cause": what}}
        history = [*config.history, event]
        atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(
            config.model_copy(update={"history": history}).model_dump(mode="json"), sort_keys=False))
        mark_run_end(run_dir, "diverged", epoch)
    where = (f"{run_dir}/last keeps epoch {epoch}: lower the lr and continue with 'edgeseg train --resume "
             f"{run_dir} optimizer.lr={config.optimizer.lr / 10:g}'" if resumable else
             f"nothing was saved: lower optimizer.lr (now {config.optimizer.lr:g}) and train again")
    raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, step {in_epoch} of {steps_per_epoch}: "
                           f"{what}; {where}")


def first_non_finite(*models: torch.nn.Module | None) -> str | None:
    """The name of the first weight or buffer holding NaN or infinity, or None."""
    for model in models:
        for name, tensor in (model.state_dict().items() if model is not None else ()):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return name
    return None


def check_split_sizes(config: TrainConfig, train_set, world_size: int) -> None:
    """At least one full batch per process per epoch (the loader drops a partial one)."""
    need = config.batch_size * world_size
    if len(train_set) < need:
        raise ConfigError(f"batch_size: the '{config.data.train_split}' split has {len(train_set)} images, fewer than "
                          f"one batch of {config.batch_size}{f' on each of {world_size} processes' if world_size > 1 else ''}"
                          f" (lower batch_size or add images)")


def check_val_split(val_set, split: str) -> None:
    """Read every val sample now (a bad file fails before epoch 1, not after ``eval_every``
    epochs) and require some labelled pixels, without which mIoU, and so best/, cannot exist."""
    if len(val_set) == 0:
        raise EdgesegError(f"data.val_split: the '{split}' split has no images; it is needed to measure mIoU")
    num_classes = val_set.classes.num_classes
    labelled = sum(int((val_set.load(i)[1] < num_classes).sum()) for i in range(len(val_set)))
    if labelled == 0:
        raise EdgesegError(f"data.val_split: every pixel of the '{split}' split ({len(val_set)} images) is void "
                           f"({val_set.classes.ignore_index}), so mIoU cannot be measured and no best/ saved")


def train(config: TrainConfig, resume_dir: Path | None = None, log=print) -> RunResult:
    """Train per ``config``; with ``resume_dir`` continue that run from its ``last/`` state.

    Guarantees: the run directory holds config.yaml (the resolved config), metrics.csv (one
    row per epoch), tb/ (TensorBoard), last/ (resumable state, replaced atomically each
    epoch), best/ (a model directory, the epoch with the best val mIoU; with
    ``weight_average`` the average is what is evaluated and saved), and at the end
    curves.png (loss, lr, val mIoU per epoch) and confusion.png (val, of the best epoch this
    call evaluated). Randomness is reseeded every epoch from (seed, epoch, rank), so a
    resumed run continues exactly.
    Under torchrun every process trains on its shard; rank 0 alone writes.
    The val split is read before epoch 1; a NaN or infinite loss or weight stops the run
    (TrainingDiverged) before anything non-finite is saved.
    """
    process = distributed.start(config.device)
    try:
        return _train(config, resume_dir, log if process.is_main else (lambda _: None), process)
    finally:
        distributed.stop(process)


def _train(config: TrainConfig, resume_dir: Path | None, log, process: distributed.Process) -> RunResult:
    device, cuda = process.device, process.device.type == "cuda"
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = cuda
    seed_everything(config.seed)
    source = open_source(config.data.spec)
    classes = source.classes
    transform = TrainTransform(config.augment)  # normalised as the model's config.json will say, set below
    for note in getattr(source, "notes", []):
        log(f"data: {note}")
    train_set = source.dataset(config.data.train_split, cache=config.data.cache, transform=transform)
    val_set = source.dataset(config.data.val_split, cache=config.data.cache)
    check_split_sizes(config, train_set, process.world_size)
    check_val_split(val_set, config.data.val_split)
    trained_on_val = set(split_parts(config.data.train_split)) & set(split_parts(config.data.val_split))
    if trained_on_val:
        log(f"data: train_split '{config.data.train_split}' holds the val split's images "
            f"({', '.join(sorted(trained_on_val))}): val mIoU is no held-out measure and best/ is chosen on trained "
            f"images; deploy last/ and judge the recipe on held-out groups (edgeseg folds)")
    if config.data.cache and config.data.num_workers > 0:
        train_set.preload()
    model, model_config = build_model(config, classes, val_set)
    transform.normalize = Normalize(model_config.mean, model_config.std)
    check_crops(config, model_config.output_stride)
    if config.model.pretrained and resume_dir is None:
        copied, unmatched = load_pretrained(model, config.model.pretrained)
        log(f"pretrained: {copied} tensors from {config.model.pretrained} matched by name and shape; "
            + describe_unmatched(unmatched))
    model.to(device)
    memory_format = training_memory_format(config, cuda)
    model.to(memory_format=memory_format)
    optimizer = build_optimizer(config, model)
    checkpointed = resolve_checkpoint_modules(model, config.memory_saving, model_config.architecture)
    enable_checkpointing(model, checkpointed)
    lean_loss = bool(checkpointed)
    if checkpointed:
        log(f"memory_saving: checkpointing {', '.join(checkpointed)} and the loss's upsampled logits")
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and config.amp)
    criterion = pixel_loss(loss_weights(config, train_set, device), classes.ignore_index,
                           config.loss.ohem_threshold, config.loss.ohem_min_kept, config.loss.label_smoothing)
    heads = head_weights(model, config.loss.head_weights)
    if len(heads) > 1:
        log("loss: " + " + ".join(f"{weight:g} x {name}" for name, weight in heads.items()))
    distiller = (Distiller(config.distill, classes, model_config.mean, model_config.std, device)
                 if config.distill else None)

    run_dir = resume_dir or new_run_dir(config.runs_dir, config.name)
    if resume_dir is None:
        config = config.model_copy(update={"history": []})  # a new run has no past
    elif process.is_main:
        for line in recover_run_dir(run_dir):
            log(f"{run_dir}: {line}")
    if process.distributed:  # every rank must agree on rank 0's choice of folder
        run_dir = Path(distributed.broadcast_text(process, str(run_dir)))
    start_epoch, step, best, rows = 0, 0, -1.0, []
    average = WeightAverage(model, config.weight_average) if config.weight_average else None
    average_model = average.model if average else None
    evaluated = model if average_model is None else average_model
    if resume_dir is not None:
        progress = load_training_state(run_dir / LAST_DIR, model, optimizer, average_model)
        start_epoch, step, best = progress["epoch"], progress["step"], progress["best_miou"]
        scaler.load_state_dict(progress.get("grad_scaler") or scaler.state_dict())
        rows = read_metrics_csv(run_dir / METRICS_CSV)[:start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch}")
    l1 = config.optimizer.weight_decay if config.optimizer.regularization == "l1" else 0.0
    sparsity = SparsityControl(config.sparsity, model, l1) if config.sparsity.active or l1 else None
    if process.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_run_end(run_dir)
        atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    tb = TensorBoardLog(run_dir / TENSORBOARD_DIR, config.tensorboard and process.is_main)

    net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) if process.distributed else model
    sampler = DistributedSampler(train_set, process.world_size, process.rank, shuffle=True, seed=config.seed,
                                 drop_last=True) if process.distributed else None
    loader_generator = torch.Generator()
    shard = len(train_set) // process.world_size
    steps_per_epoch = max(1, shard // config.batch_size)
    predictor = TorchPredictor(evaluated, model_config, device)
    autocast = training_autocast(config, cuda)
    if not cuda and config.cpu_amp is True and not cpu_has_native_bfloat16() and process.is_main:
        log("cpu_amp: this CPU has neither AVX-512 BF16 nor AMX, so bfloat16 is emulated and training runs "
            "several times slower than float32; set cpu_amp=auto or cpu_amp=false")
    last_metrics = best_metrics = None
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch * 1_009 + process.rank)
        loader_generator.manual_seed(config.seed * 1000 + epoch)
        transform.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                            drop_last=True, num_workers=config.data.num_workers, generator=loader_generator,
                            pin_memory=cuda)
        net.train()
        started, total_loss, seen = time.perf_counter(), 0.0, 0
        for images, labels in track(loader, steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}"):
            lr = config.optimizer.lr * lr_factor(config.schedule, step, steps_per_epoch, config.epochs)
            lr_mults = sparsity.lr_mults() if sparsity else {}
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_mults.get(group.get("layer"), 1.0)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                if len(heads) > 1:
                    loss, logits = multi_head_loss(net, images, labels, criterion, heads, lean_loss)
                else:
                    logits = net(images)
                    loss = head_loss(criterion, logits, labels, lean_loss)
                if distiller is not None:
                    loss = loss + distiller(images, logits, labels)
            loss_value = float(loss.detach())
            # every rank must stop at the same step, or the others wait in all-reduce for ever
            if distributed.sum_across(process, float(not math.isfinite(loss_value)))[0]:
                diverged(config, run_dir, process, epoch, step, steps_per_epoch, f"the loss is {loss_value}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            if sparsity:
                sparsity.after_step(step + 1, lr, lr_mults)
            if average:
                average.update(step)
            total_loss += loss_value * images.shape[0]
            seen += images.shape[0]
            step += 1
            if step % config.log_every == 0:
                tb.scalars(step, **{"train/loss": loss_value, "train/lr": lr})
            if config.sparsity.display_sparsity and step % config.sparsity.display_sparsity == 0:
                per_layer, total = zero_fractions(conv_layers(model), config.sparsity.sparsity_threshold)
                tb.scalars(step, **{"sparsity/total": total, **{f"sparsity/{k}": v for k, v in per_layer.items()}})
                log(f"step {step}: sparsity {100 * total:.2f} % ("
                    + ", ".join(f"{k} {100 * v:.1f}" for k, v in per_layer.items()) + ")")
        seconds = time.perf_counter() - started
        flush_subnormals_(model)  # dead channels drift there; they cost 3x on a CPU
        if average_model is not None:
            flush_subnormals_(average_model)
        total_loss, seen = distributed.sum_across(process, total_loss, seen)
        bad = first_non_finite(model, average_model)
        if bad is not None:
            diverged(config, run_dir, process, epoch, step - 1, steps_per_epoch, f"weight '{bad}' is not finite")
        row = {"epoch": epoch + 1, "step": step, "lr": f"{lr:.6g}", "train_loss": f"{total_loss / max(seen, 1):.5f}",
               "val_miou": "", "val_pixel_acc": "", "epoch_seconds": f"{seconds:.2f}",
               "train_images_per_s": f"{seen / seconds:.2f}"}
        # per epoch as well as every log_every steps: a short run may never reach log_every
        tb.scalars(step, **{"epoch/train_loss": total_loss / max(seen, 1), "epoch/lr": lr})
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            distributed.share_buffers(process, evaluated)
            evaluated.eval()
            last_metrics = evaluate(predictor, val_set, num_workers=0,
                                    shard=(process.rank, process.world_size))
            row.update(val_miou=f"{last_metrics['miou']:.5f}", val_pixel_acc=f"{last_metrics['pixel_acc']:.5f}")
            tb.evaluation(step, last_metrics)
            if process.is_main:
                tb.overlays(step, predictor, val_set)
                if last_metrics["miou"] > best:
                    best, best_metrics = last_metrics["miou"], last_metrics
                    save_model_dir(evaluated, model_config, run_dir / BEST_DIR)
        rows.append(row)
        if process.is_main:
            write_metrics_csv(run_dir / METRICS_CSV, rows)
            save_training_state(run_dir / LAST_DIR, model, optimizer, {
                "epoch": epoch + 1, "step": step, "best_miou": best, "grad_scaler": scaler.state_dict()},
                average=average_model)
            if config.save_every and ((epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs):
                save_periodic_checkpoint(run_dir, evaluated, model_config, {"epoch": epoch + 1, "step": step},
                                         config.keep_last)
        log(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']}  lr {row['lr']}  "
            f"val mIoU {row['val_miou'] or '-'}  ({seconds:.1f} s, {row['train_images_per_s']} img/s)")
    tb.close()
    if process.is_main:
        mark_run_end(run_dir, "finished", config.epochs)
        write_run_pictures(run_dir, rows, best_metrics or last_metrics, classes.names,
                           f"{'best' if best_metrics else 'last'} model on {config.data.val_split}")
    return RunResult(run_dir, best, last_metrics, process.is_main)

