"""``edgeseg run``: the stages of a recipe in order, each a function from the previous
stage's model directory to its own, resumable at any point.

Pipeline directory::

    recipe.yaml                  the resolved recipe, as run
    stages/NN-<name>/spec.json   the stage's settings, written before it starts
    stages/NN-<name>/run/        a training stage's run directory (last/ resumes it)
    stages/NN-<name>/model/      the model directory the stage hands on
    stages/NN-<name>/metrics.json  written last: the stage is done
    report.md, report.json

A stage with metrics.json is skipped; an interrupted training stage resumes from its
``run/last``; any other interrupted stage is redone (they take seconds), and so is every
stage after one that ran. A stage whose settings changed since it ran is an error rather
than a silent mix of two recipes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from edgeseg.compress.bn_fold import fold_model_dir
from edgeseg.compress.sample_images import labelled_images, real_check_images
from edgeseg.compress.threshold import threshold_model_dir
from edgeseg.data.spec import open_source
from edgeseg.errors import ConfigError
from edgeseg.fileio import atomic_replace_dir, atomic_write_json, atomic_write_text
from edgeseg.models.model_dir import CONFIG_NAME, WEIGHTS_NAME, read_model_config
from edgeseg.export.bundle import write_bundle
from edgeseg.export.onnx import Tolerances, export_onnx
from edgeseg.pipeline.quantize import run_quantize
from edgeseg.pipeline.recipe import (ExportStage, FoldStage, QuantizeStage, Recipe, Stage, ThresholdStage, TrainStage,
                                     finetune_section, stage_train_config)
from edgeseg.pipeline.report import build_report, measure_latencies, measure_model_dir, report_markdown
from edgeseg.runtime import resolve_device
from edgeseg.schema import validate
from edgeseg.train.config import TrainConfig
from edgeseg.train.checkpoint import has_resumable_state
from edgeseg.train.loop import read_metrics_csv, train

Log = Callable[[str], None]
RUN_ONLY_KEYS = ("runs_dir", "device", "tensorboard", "log_every")


def run_pipeline(recipe: Recipe, stages: dict[str, Stage], command: str = "edgeseg run", log: Log = print) -> dict:
    """Run (or finish) every stage, measure each, write report.md and report.json; returns
    the report. Settings are checked against earlier runs of the same directory first."""
    out = recipe.directory
    base = validate(TrainConfig, recipe.train, "recipe: train")
    plan = []  # (stage dir, settings, spec, name); index 0 is the start model when there is one
    if recipe.start is not None:
        read_model_config(recipe.start)
        plan.append((out / "stages" / "00-start", {"stage": "start", "model": recipe.start}, None, "start"))
    for index, (name, spec) in enumerate(stages.items(), 1):
        stage_dir = out / "stages" / f"{index:02d}-{name}"
        plan.append((stage_dir, stage_settings(recipe, name, spec, stage_dir), spec, name))
    for stage_dir, settings, _, _ in plan:
        _check_unchanged(stage_dir, settings)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    dataset = open_source(base.data.spec).dataset(recipe.report.split, cache=True)
    size = tuple(recipe.report.size) if recipe.report.size else tuple(dataset.read(0)[1].shape)
    device = resolve_device(recipe.report.device)

    def measure(model_dir: Path, artifact: str | None = None) -> dict:
        return measure_model_dir(Path(model_dir), dataset, size, device, artifact)

    rows, models, upstream_ran, previous = [], {}, False, None
    for stage_dir, settings, spec, name in plan:
        if spec is None:
            rows.append(_finish(stage_dir, settings, log, lambda: ({"model": recipe.start}, measure(recipe.start))))
            models[stage_dir.name] = previous = recipe.start
            continue
        if upstream_ran and stage_dir.exists():
            log(f"stage {stage_dir.name}: built on an earlier stage that ran again, so it runs again too")
            shutil.rmtree(stage_dir)
        upstream_ran = upstream_ran or not (stage_dir / "metrics.json").is_file()
        model_dir, init_from = stage_dir / "model", previous

        def work(spec=spec, stage_dir=stage_dir, model_dir=model_dir, init_from=init_from, name=name):
            details = _run_stage(recipe, name, spec, stage_dir, model_dir, init_from, base, size, log)
            if "artifact" in details:  # an export: measured as deployed, handing its input on
                return details, measure(init_from, details["artifact"])
            return details, measure(model_dir)

        row = _finish(stage_dir, settings, log, work)
        rows.append(row)
        models[stage_dir.name] = row.get("artifact") or str(model_dir)
        previous = init_from if "artifact" in row else str(model_dir)
    log(f"timing {len(models)} models side by side at {size[0]}x{size[1]}")
    latencies = measure_latencies(models, size, recipe.report.latency_runs)
    report = build_report(recipe.name, rows, latencies, recipe.report.split, command)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def stage_settings(recipe: Recipe, name: str, spec: Stage, stage_dir: Path) -> dict:
    """What the stage's result depends on, for the changed-settings check on resume."""
    settings = spec.model_dump(mode="json")
    if isinstance(spec, TrainStage):
        config = stage_train_config(recipe, name, spec, stage_dir, None).model_dump(mode="json")
        for key in RUN_ONLY_KEYS:
            config.pop(key, None)
        config["data"].pop("num_workers", None)
        config["model"].pop("init_from", None)
        settings["train"] = config
    settings["report_split"] = recipe.report.split  # metrics.json holds measurements on this split
    return settings


def _check_unchanged(stage_dir: Path, settings: dict) -> None:
    spec_file = stage_dir / "spec.json"
    if spec_file.is_file() and _did_work(stage_dir):
        recorded = json.loads(spec_file.read_text(encoding="utf-8"))
        recorded.setdefault("report_split", settings["report_split"])  # a directory older than the key
        if recorded != settings:
            raise ConfigError(f"{stage_dir}: this stage ran with other settings (changed: "
                              f"{', '.join(_changed_keys(recorded, settings))}); "
                              f"delete {stage_dir} to run it (and the stages after it) again")


def _did_work(stage_dir: Path) -> bool:
    """Whether a stage left something a rerun would build on (its metrics.json, or a training
    state under it); one that failed before that is simply redone with the new settings."""
    return (stage_dir / "metrics.json").is_file() or next(stage_dir.rglob("state.json"), None) is not None


def _finish(stage_dir: Path, settings: dict, log: Log, work) -> dict:
    """Skip a finished stage, or run ``work`` and record its metrics.json."""
    metrics_file, spec_file = stage_dir / "metrics.json", stage_dir / "spec.json"
    if metrics_file.is_file():
        log(f"stage {stage_dir.name}: done before, skipped")
        return json.loads(metrics_file.read_text(encoding="utf-8"))
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_file, settings)
    log(f"stage {stage_dir.name}: started")
    started = time.perf_counter()
    details, measurements = work()
    row = {"dir": stage_dir.name, "kind": settings["stage"], "seconds": details.pop("seconds", None),
           "measure_seconds": None, **details, "measurements": measurements}
    row["measure_seconds"] = time.perf_counter() - started - (row["seconds"] or 0.0)
    atomic_write_json(metrics_file, row)
    log(f"stage {stage_dir.name}: val mIoU {100 * measurements['miou']:.2f} %, conv-weight sparsity "
        f"{100 * measurements['sparsity']:.2f} %")
    return row


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def _run_stage(recipe: Recipe, name: str, spec: Stage, stage_dir: Path, model_dir: Path,
               init_from: str | None, base: TrainConfig, size: tuple[int, int], log: Log) -> dict:
    started = time.perf_counter()
    if isinstance(spec, TrainStage):
        details = _train_stage(recipe, name, spec, stage_dir, model_dir, init_from, log)
    elif isinstance(spec, ThresholdStage):
        layers, metrics = threshold_model_dir(init_from, model_dir, spec.threshold_config())
        log(f"threshold: conv weight sparsity {100 * metrics['sparsity_before']:.2f} % -> "
            f"{100 * metrics['sparsity_after']:.2f} % ({sum(r.capped_units > 0 for r in layers)} of "
            f"{len(layers)} layers capped)")
        details = {**metrics, "layers": [row.as_dict() for row in layers]}
    elif isinstance(spec, FoldStage):
        images = real_check_images(init_from, base.data.spec, recipe.report.split, spec.check_images)
        details = fold_model_dir(init_from, model_dir, images)
        log(f"fold-bn: {details['folded_into_conv']} BatchNorms folded, max |logit difference| "
            f"{details['max_abs_diff']:.2e} on {details['check_images']} images")
    elif isinstance(spec, QuantizeStage):
        finetune = finetune_section(recipe, spec) if spec.train is not None else None
        details = run_quantize(init_from, model_dir, spec.quantization, base.data.spec, finetune, stage_dir / "work",
                               log, f"recipe: stages.{name}.train")
    elif isinstance(spec, ExportStage):
        details = _export_stage(spec, stage_dir, init_from, base, recipe.report.split, size, log)
    else:  # pragma: no cover - parse_stage admits no other kind
        raise ConfigError(f"stages.{name}: no runner for stage '{spec.stage}'")
    return {**details, "seconds": time.perf_counter() - started}


def _export_stage(spec: ExportStage, stage_dir: Path, source: str, base: TrainConfig, split: str,
                  size: tuple[int, int], log: Log) -> dict:
    int8 = read_model_config(source).quantization is not None
    fmt = spec.format or ("onnx-int8" if int8 else "onnx")
    if fmt != "bundle" and (fmt == "onnx-int8") != int8:
        raise ConfigError(f"export: format {fmt} does not fit {source} ({'' if int8 else 'not '}quantized)")
    check = labelled_images(source, base.data.spec, split, spec.check_images)
    tolerances = Tolerances(min_agreement=spec.min_agreement)
    export_size = tuple(spec.size) if spec.size else size
    if fmt == "bundle":
        artifact = stage_dir / "bundle"
        details = write_bundle(source, artifact, export_size, check, tolerances)
    else:
        artifact = stage_dir / "model.onnx"
        details = export_onnx(source, artifact, int8, export_size, check, tolerances)
    log(f"export: wrote {artifact} ({fmt}); pixel agreement with PyTorch {100 * details['agreement']:.2f} % "
        f"on {details['check_images']} images")
    return {**details, "format": fmt, "artifact": str(artifact)}


def _train_stage(recipe: Recipe, name: str, spec: TrainStage, stage_dir: Path, model_dir: Path,
                 init_from: str | None, log: Log) -> dict:
    config = stage_train_config(recipe, name, spec, stage_dir, init_from)
    run_dir = stage_dir / config.name
    resume = run_dir if has_resumable_state(run_dir) else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first epoch ended: nothing to keep
    result = train(config, resume_dir=resume, log=log)
    if spec.kept == "best":
        atomic_replace_dir(lambda tmp: shutil.copytree(run_dir / "best", tmp, dirs_exist_ok=True), model_dir)
    else:
        def build(tmp: Path) -> None:
            shutil.copy2(run_dir / "best" / CONFIG_NAME, tmp / CONFIG_NAME)
            shutil.copy2(run_dir / "last" / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        atomic_replace_dir(build, model_dir)
    epochs = read_metrics_csv(run_dir / "metrics.csv")
    return {"epochs": len(epochs), "kept": spec.kept, "best_val_miou": result.best_miou,
            "resumed": resume is not None,
            "train_seconds": sum(float(row["epoch_seconds"]) for row in epochs)}
