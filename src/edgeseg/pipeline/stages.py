"""The stage table: every kind of stage is one function ``(source model dir, validated spec,
output path, context) -> StageResult``. ``edgeseg run`` calls them in a recipe's order; the
single-step commands (threshold, prune, fold-bn, quantize, export) build a one-stage spec from their
options and call the same function, so each setting has one default and one help text."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeseg.compress.bn_fold import fold_model_dir
from edgeseg.compress.prune import prune_model_dir
from edgeseg.compress.prune_search import scope_sizes
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.compress.sample_images import labelled_images, real_check_images
from edgeseg.compress.threshold import threshold_model_dir
from edgeseg.data.spec import open_dataset, open_source
from edgeseg.errors import ConfigError
from edgeseg.export.bundle import write_bundle
from edgeseg.export.onnx import Tolerances, export_onnx
from edgeseg.fileio import atomic_replace_dir
from edgeseg.layout import (BEST_DIR, BUNDLE_MODEL, CONFIG_NAME, LAST_DIR, METRICS_CSV, STAGE_MODEL, STAGE_RUN,
                            WEIGHTS_NAME)
from edgeseg.models.model_dir import read_model_config
from edgeseg.models.surgery import convolutionalize_to_dir, surgery_classes
from edgeseg.pipeline.prune_target import search_allocation, write_scan
from edgeseg.pipeline.specs import (ConvolutionalizeStage, ExportStage, FoldStage, PruneStage, QuantizeStage, Stage,
                                    ThresholdStage, TrainStage)
from edgeseg.schema import StrictModel, merge, validate
from edgeseg.training import distributed
from edgeseg.training.checkpoint import has_resumable_state
from edgeseg.training.config import TrainConfig
from edgeseg.training.loop import read_metrics_csv, train

Log = Callable[[str], None]
SURGERY_INPUT_SIZE = (500, 500)  # PASCAL VOC's largest images, when no dataset size is known
FINETUNE_DEFAULTS = {"epochs": 5, "optimizer": {"lr": 1e-5}, "eval_every": 1}


@dataclass(frozen=True)
class StageContext:
    """What a stage reads besides its source and spec."""

    work_dir: Path  # where a training stage keeps its resumable run
    data: str | dict | None = None  # dataset spec (string or mapping) for checks, calibration and training
    split: str = "val"  # the split checks run on
    size: tuple[int, int] | None = None  # the dataset's image size (export default)
    train: dict[str, Any] = field(default_factory=dict)  # the shared training section
    log: Log = print


@dataclass(frozen=True)
class StageResult:
    """What a stage made: the model directory it hands on, the file or folder it exported
    (None unless an export), and its metrics (also recorded in the model's history)."""

    model_dir: Path
    artifact: Path | None
    metrics: dict[str, Any]


def run_training(source: Path | None, spec: TrainStage, out: Path, ctx: StageContext) -> StageResult:
    """train, l1 (L1 regularisation forced) or sparse (zeros frozen): a training run in
    ``ctx.work_dir`` starting from ``source``, resumed if it was interrupted; ``out`` gets the
    best or the last epoch's model per ``spec.kept``."""
    config = stage_train_config(ctx.train, spec, ctx.work_dir, source, f"{spec.stage}.train")
    run_dir = ctx.work_dir / config.name
    resume = _resumable(run_dir)
    result = train(config, resume_dir=resume, log=ctx.log)
    if not result.is_main:  # under torchrun rank 0 alone writes
        return StageResult(out, None, {"stage": spec.stage})
    hand_on(run_dir, spec.kept, out)
    epochs = read_metrics_csv(run_dir / METRICS_CSV)
    return StageResult(out, None, {
        "stage": spec.stage, "epochs": len(epochs), "kept": spec.kept, "best_val_miou": result.best_miou,
        "resumed": resume is not None, "train_seconds": sum(float(row["epoch_seconds"]) for row in epochs)})


def hand_on(run_dir: Path, kept: str, out: Path) -> None:
    """``out`` becomes the run's best model, or its last epoch's weights ("last")."""
    if kept == "best":
        atomic_replace_dir(lambda tmp: shutil.copytree(run_dir / BEST_DIR, tmp, dirs_exist_ok=True), out)
        return

    def build(tmp: Path) -> None:
        shutil.copy2(run_dir / BEST_DIR / CONFIG_NAME, tmp / CONFIG_NAME)
        shutil.copy2(run_dir / LAST_DIR / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
    atomic_replace_dir(build, out)


def run_threshold(source: Path, spec: ThresholdStage, out: Path, ctx: StageContext) -> StageResult:
    """caffe-jacinto's threshold tool: the smallest conv weights zeroed to a target sparsity."""
    layers, metrics = threshold_model_dir(source, out, spec.threshold_config())
    ctx.log(f"threshold: conv weight sparsity {100 * metrics['sparsity_before']:.2f} % -> "
            f"{100 * metrics['sparsity_after']:.2f} % ({sum(r.capped_units > 0 for r in layers)} of "
            f"{len(layers)} layers capped)")
    return StageResult(out, None, {**metrics, "layers": [row.as_dict() for row in layers]})


def run_prune(source: Path, spec: PruneStage, out: Path, ctx: StageContext) -> StageResult:
    """ICNet's filter pruning: each layer keeps the ``spec.keep`` fraction of its most important
    filters (removed, or with ``spec.soft`` zeroed), or with a MACs or latency target a keep per
    layer group chosen from a sensitivity scan; a training stage after it fine-tunes."""
    config = spec.prune_config()
    search = search_allocation(source, config, out, ctx.data, ctx.split, ctx.log) if config.targeted else None
    layers, metrics, plan = prune_model_dir(source, out, config, search[0].keeps if search else None)
    narrowed = sum(row.channels_after < row.channels_before for row in layers)
    how = f"keep {spec.keep}" if search is None else "keep per layer group from the scan"
    if search is not None:
        allocation, sensitivity, found = search
        write_scan(out, sensitivity, allocation, scope_sizes(plan))
        metrics.update(found)
    ctx.log(f"prune: {'zeroed' if spec.soft else 'removed'} filters in {narrowed} of {len(layers)} convs ({how}, "
            f"{spec.criterion}); GMACs {metrics['macs_before'] / 1e9:.3f} -> "
            f"{metrics['macs_after'] / 1e9:.3f}, params {metrics['params_before']:,} -> {metrics['params_after']:,}"
            + (" once committed" if spec.soft else ""))
    return StageResult(out, None, {**metrics, "layers": [row.as_dict() for row in layers]})


def run_fold(source: Path, spec: FoldStage, out: Path, ctx: StageContext) -> StageResult:
    """BatchNorms merged into convs, checked on real images of ``ctx.data`` (random ones when
    no dataset is known)."""
    images = real_check_images(source, ctx.data, ctx.split, spec.check_images) if ctx.data else None
    metrics = fold_model_dir(source, out, images)
    ctx.log(f"fold-bn: {metrics['folded_into_conv']} BatchNorms folded, {metrics['made_affine']} made "
            f"per-channel affines; max |logit difference| {metrics['max_abs_diff']:.2e} on "
            f"{metrics['check_images']} {'images' if images else 'random inputs'}")
    return StageResult(out, None, metrics)


def run_quantize(source: Path, spec: QuantizeStage, out: Path, ctx: StageContext) -> StageResult:
    """Post-training quantization calibrated on training images of ``ctx.data``; with
    ``spec.train`` then quantization-aware fine-tuning in ``ctx.work_dir`` (resumable),
    handing on its best epoch."""
    quant, data = spec.quantization, _data_of(source, ctx)
    finetune = finetune_section(ctx.train, spec)
    ptq_dir = ctx.work_dir / "ptq" if finetune is not None else out
    if finetune is not None and (ptq_dir / CONFIG_NAME).is_file():
        metrics = {"stage": "quantize", "resumed": True}
    else:
        images = real_check_images(source, data, "train", quant.calibration_batches, spread=True)
        metrics = quantize_model_dir(source, ptq_dir, quant, images)
        ctx.log(f"quantize: {metrics['quantized_tensors']} tensors calibrated on {metrics['calibration_images']} "
                f"training images ({quant.scheme}, {quant.weight_bits}-bit weights, {quant.activation_bits}-bit "
                f"activations, target {quant.target}); zero weights {metrics['zeros_before']} -> "
                f"{metrics['zeros_after']}")
    if finetune is None:
        return StageResult(out, None, metrics)
    config = finetune_config(merge({"data": {"spec": data}}, finetune), ptq_dir, ctx.work_dir, "stages.quantize.train")
    run_dir = ctx.work_dir / config.name
    resume = _resumable(run_dir)
    result = train(config, resume_dir=resume, log=ctx.log)
    hand_on(run_dir, spec.keep, out)
    epochs = read_metrics_csv(run_dir / METRICS_CSV)
    return StageResult(out, None, {**metrics, "finetune_epochs": len(epochs), "kept": spec.keep,
                                   "best_val_miou": result.best_miou,
                                   "train_seconds": sum(float(row["epoch_seconds"]) for row in epochs)})


def run_export(source: Path, spec: ExportStage, out: Path, ctx: StageContext) -> StageResult:
    """An ONNX file or deploy bundle at ``out``, checked on real images of ``ctx.data`` before it
    is written; hands ``source`` on unchanged."""
    int8 = read_model_config(source).quantization is not None
    fmt = export_format(source, spec)
    data = _data_of(source, ctx)
    check = labelled_images(source, data, ctx.split, spec.check_images)
    tolerances = Tolerances(min_agreement=spec.min_agreement)
    size = tuple(spec.size) if spec.size else ctx.size
    if size and not spec.dynamic:  # a check image larger than the file's fixed input is cropped to it
        check = [(image[..., :size[0], :size[1]], None if label is None else label[..., :size[0], :size[1]])
                 for image, label in check]
    if fmt == "bundle":
        metrics = write_bundle(source, out, size, check, tolerances)
    else:
        metrics = export_onnx(source, out, int8, size, check, tolerances, dynamic=spec.dynamic)
    shape = ("dynamic height and width, checked at " + ", ".join(f"{h}x{w}" for h, w in metrics["sizes_checked"])
             if metrics.get("dynamic") else f"{metrics['size'][0]}x{metrics['size'][1]}")
    ctx.log(f"export: wrote {out} ({fmt}, {shape}); "
            + (f"pixel agreement with PyTorch {100 * metrics['agreement']:.2f} %" if int8 else
               f"max |logit difference| {metrics['max_abs_diff']:.2e}")
            + (f", mIoU {100 * metrics['exported_miou']:.2f} vs {100 * metrics['reference_miou']:.2f} %"
               if "miou_drop" in metrics else "")
            + (f"; OpenCV DNN agrees with ONNX Runtime on {100 * metrics['opencv_agreement']:.2f} % of pixels"
               if "opencv_agreement" in metrics else "")
            + f" on {metrics['check_images']} images of {data} [{ctx.split}]")
    return StageResult(source, out, {"stage": "export", **metrics, "format": fmt})


def run_convolutionalize(source: Path | None, spec: ConvolutionalizeStage, out: Path, ctx: StageContext) -> StageResult:
    """DIGITS' net surgery: an ImageNet AlexNet's weights as an fcn_alexnet model directory for
    ``spec.classes`` (default: those of ``ctx.data``), to be trained by the stages after it."""
    if spec.classes is not None:
        classes = surgery_classes(spec.classes)
    elif ctx.data is not None:
        classes = open_source(ctx.data).classes
    else:
        raise ConfigError("convolutionalize: classes: name them (voc, camvid, cityscapes or a class-labels file) "
                          "or give a dataset")
    metrics = convolutionalize_to_dir(spec.weights, classes, out, ctx.size or SURGERY_INPUT_SIZE)
    ctx.log(f"convolutionalize: copied {', '.join(metrics['copied'])} from {spec.weights}; dropped "
            f"{', '.join(metrics['dropped']) or 'nothing'}; {classes.num_classes} classes")
    return StageResult(out, None, metrics)


def export_format(source: Path, spec: ExportStage) -> str:
    """The format ``spec`` asks for, checked against whether ``source`` is quantized."""
    int8 = read_model_config(source).quantization is not None
    fmt = spec.format or ("onnx-int8" if int8 else "onnx")
    if fmt != "bundle" and (fmt == "onnx-int8") != int8:
        raise ConfigError(f"format: {fmt} does not fit {source}: " + (
            "it is quantized; export it as onnx-int8" if int8 else "not quantized; run 'edgeseg quantize' first"))
    return fmt


@dataclass(frozen=True)
class StageKind:
    spec: type[StrictModel]
    run: Callable[[Path | None, Any, Path, StageContext], StageResult]
    needs_model: bool
    every_rank: bool = False  # under torchrun every process runs it (DDP training), else rank 0 alone
    hands_on_source: bool = False  # its output is an artifact; the next stage starts from its source

    def output_name(self, spec: Any) -> str:
        """The name of the stage's output inside its pipeline stage directory."""
        if isinstance(spec, ExportStage):
            return "bundle" if spec.format == "bundle" else BUNDLE_MODEL
        return STAGE_MODEL


STAGES: dict[str, StageKind] = {
    "train": StageKind(TrainStage, run_training, False, True),  # from the previous stage's model, if any
    "l1": StageKind(TrainStage, run_training, False, True),  # L1 regularisation (sparsity to come)
    "sparse": StageKind(TrainStage, run_training, False, True),  # fine-tune with the zero weights frozen
    "threshold": StageKind(ThresholdStage, run_threshold, True),  # zero the smallest weights per layer
    "prune": StageKind(PruneStage, run_prune, True),  # remove (or zero) the least important filters
    "fold-bn": StageKind(FoldStage, run_fold, True),  # merge BatchNorms into the convs before them
    "quantize": StageKind(QuantizeStage, run_quantize, True),  # PTQ, optional quantization-aware fine-tuning
    "export": StageKind(ExportStage, run_export, True, hands_on_source=True),  # ONNX fp32/int8 or a bundle
    # an ImageNet AlexNet's weights -> fcn_alexnet (fc6/fc7 as convs), before training stages
    "convolutionalize": StageKind(ConvolutionalizeStage, run_convolutionalize, False),
}


def run_stage(spec: Stage, source: Path | None, out: Path, ctx: StageContext) -> StageResult:
    """Run one stage of the table; adds the wall time to its metrics as ``seconds``."""
    started = time.perf_counter()
    kind = STAGES[spec.stage]
    with contextlib.nullcontext() if kind.every_rank else distributed.single_process():
        result = kind.run(Path(source) if source is not None else None, spec, Path(out), ctx)
    result.metrics["seconds"] = time.perf_counter() - started
    return result


def stage_train_config(train_section: dict, spec: TrainStage, work_dir: Path, init_from: str | Path | None,
                       where: str) -> TrainConfig:
    """The full training config of a training stage, validated (errors name ``where``)."""
    data = merge(train_section, spec.train)
    data.update(name=STAGE_RUN, runs_dir=str(work_dir))
    if init_from is not None:
        key = "init_from" if spec.init == "continue" else "pretrained"
        data["model"] = {**data.get("model", {}), key: str(init_from)}
    if spec.stage == "l1":
        data["optimizer"] = {**data.get("optimizer", {}), "regularization": "l1"}
    if spec.stage == "sparse":
        data["sparsity"] = {**data.get("sparsity", {}), "sparse": True}
    return validate(TrainConfig, data, where)


def finetune_section(train_section: dict, spec: QuantizeStage) -> dict | None:
    """A quantize stage's fine-tuning keys (None: calibration only): the shared train section,
    then the fine-tuning defaults (epochs, lr), then the stage's own train section."""
    if spec.train is None:
        return None
    base = {k: v for k, v in train_section.items() if k not in ("name", "runs_dir")}
    return merge(merge(base, FINETUNE_DEFAULTS), spec.train)


def finetune_config(train_section: dict[str, Any], ptq_dir: Path, run_root: Path, source: str) -> TrainConfig:
    """The training config of the fine-tuning: ``train_section`` over the defaults (5 epochs
    at lr 1e-5), starting from ``ptq_dir`` with frozen zeros."""
    data = merge(FINETUNE_DEFAULTS, train_section)
    data.update(name=STAGE_RUN, runs_dir=str(run_root))
    data["model"] = {**data.get("model", {}), "init_from": str(ptq_dir)}
    data["sparsity"] = {**data.get("sparsity", {}), "sparse": True}
    return validate(TrainConfig, data, source)


def dataset_image_size(data: str | dict, split: str) -> tuple[int, int]:
    """(H, W) of the first image of a dataset split."""
    return tuple(open_dataset(data, split).read(0)[1].shape)


def _data_of(source: Path, ctx: StageContext) -> str | dict:
    data = ctx.data or read_model_config(source).trained_on()
    if data is None:
        raise ConfigError(f"{source}: no training dataset recorded; pass --data SPEC")
    return data


def _resumable(run_dir: Path) -> Path | None:
    if has_resumable_state(run_dir):
        return run_dir
    if run_dir.exists():  # killed before its first epoch ended: nothing to keep (every rank may try)
        shutil.rmtree(run_dir, ignore_errors=True)
    return None
