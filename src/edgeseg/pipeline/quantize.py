"""The quantize stage: post-training quantization, then optionally quantization-aware
fine-tuning, which is an ordinary training run starting from the quantized model (ranges
frozen or still tracked per the spec, zeros of a sparse model kept frozen)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from edgeseg.compress.quant import QuantizeConfig
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.compress.sample_images import real_check_images
from edgeseg.fileio import atomic_replace_dir
from edgeseg.schema import merge, validate
from edgeseg.train.checkpoint import has_resumable_state
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import read_metrics_csv, train

FINETUNE_DEFAULTS = {"epochs": 5, "optimizer": {"lr": 1e-5}, "eval_every": 1}


def finetune_config(train_section: dict[str, Any], ptq_dir: Path, run_root: Path, source: str) -> TrainConfig:
    """The training config of the fine-tuning: ``train_section`` over the defaults (5 epochs
    at lr 1e-5), starting from ``ptq_dir`` with frozen zeros."""
    data = merge(FINETUNE_DEFAULTS, train_section)
    data.update(name="run", runs_dir=str(run_root))
    data["model"] = {**data.get("model", {}), "init_from": str(ptq_dir)}
    data["sparsity"] = {**data.get("sparsity", {}), "sparse": True}
    return validate(TrainConfig, data, source)


def run_quantize(source: str | Path, out: str | Path, quant: QuantizeConfig, data_spec: str,
                 finetune: dict[str, Any] | None, work_dir: Path, log: Callable[[str], None] = print,
                 config_source: str = "quantize") -> dict:
    """Quantize ``source`` into ``out``. Calibrates on training images of ``data_spec``; with
    ``finetune`` (a training-config mapping, possibly empty) fine-tunes in ``work_dir`` and
    hands on the best epoch by val mIoU; a fine-tuning run that was interrupted resumes."""
    ptq_dir = work_dir / "ptq" if finetune is not None else Path(out)
    if not (finetune is not None and (ptq_dir / "config.json").is_file()):
        images = real_check_images(source, data_spec, "train", quant.calibration_batches, spread=True)
        details = quantize_model_dir(source, ptq_dir, quant, images)
        log(f"quantize: {details['quantized_tensors']} tensors calibrated on {details['calibration_images']} "
            f"training images ({quant.scheme}, {quant.weight_bits}-bit weights, {quant.activation_bits}-bit "
            f"activations, target {quant.target}); zero weights {details['zeros_before']} -> {details['zeros_after']}")
    else:
        details = {"stage": "quantize", "resumed": True}
    if finetune is None:
        return details
    config = finetune_config(merge({"data": {"spec": data_spec}}, finetune), ptq_dir, work_dir, config_source)
    run_dir = work_dir / config.name
    resume = run_dir if has_resumable_state(run_dir) else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)
    result = train(config, resume_dir=resume, log=log)
    atomic_replace_dir(lambda tmp: shutil.copytree(run_dir / "best", tmp, dirs_exist_ok=True), out)
    epochs = read_metrics_csv(run_dir / "metrics.csv")
    return {**details, "finetune_epochs": len(epochs), "best_val_miou": result.best_miou,
            "train_seconds": sum(float(row["epoch_seconds"]) for row in epochs)}
