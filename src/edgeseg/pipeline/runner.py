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

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from edgeseg.data.spec import open_source, spec_record
from edgeseg.errors import ConfigError
from edgeseg.fileio import atomic_write_json, atomic_write_text, check_output
from edgeseg.layout import (RECIPE_FILE, REPORT_JSON, REPORT_MD, STAGE_METRICS, STAGE_SPEC, STAGES_DIR,
                            TRAIN_STATE)
from edgeseg.models.model_dir import read_model_config
from edgeseg.pipeline.recipe import Recipe, stage_directory
from edgeseg.pipeline.report import (build_report, class_drop_lines, measure_latencies, measure_model_dir,
                                     report_markdown, stage_pictures)
from edgeseg.pipeline.stages import (STAGES, Stage, StageContext, StageResult, TrainStage, run_stage,
                                     stage_train_config)
from edgeseg.runtime import resolve_device
from edgeseg.schema import model_in, validate
from edgeseg.training import distributed
from edgeseg.training.config import RESUME_FREE_KEYS, TrainConfig

Log = Callable[[str], None]
PIPELINE_TIMEOUT_MINUTES = 24 * 60  # under torchrun the other ranks wait while rank 0 runs a stage


def run_pipeline(recipe: Recipe, stages: dict[str, Stage], command: str = "edgeseg run",
                 log: Log = print) -> dict | None:
    """Run (or finish) every stage, measure each, write report.md and report.json; returns
    the report. Settings are checked against earlier runs of the same directory first.

    Under torchrun every process calls this: the training stages run on all of them (DDP),
    every other stage, the measurements and the report on rank 0 while the others wait; rank
    0 returns the report, the others None. The pipeline directory must be on a file system
    all processes share."""
    process = distributed.start(recipe.report.device, timeout_minutes=PIPELINE_TIMEOUT_MINUTES)
    try:
        return _run(recipe, stages, command, log if process.is_main else (lambda _: None), process)
    finally:
        distributed.stop(process)


def _run(recipe: Recipe, stages: dict[str, Stage], command: str, log: Log, process) -> dict | None:
    out, main = recipe.directory, process.is_main
    base = validate(TrainConfig, recipe.train, "recipe: train")
    plan = []  # (stage dir, settings, spec, name); index 0 is the start model when there is one
    if recipe.start is not None:
        read_model_config(recipe.start)
        start_settings = {"stage": "start", "model": recipe.start, "report_split": recipe.report.split}
        plan.append((out / STAGES_DIR / "00-start", start_settings, None, "start"))
    for index, (name, spec) in enumerate(stages.items(), 1):
        stage_dir = stage_directory(recipe, index, name)
        plan.append((stage_dir, stage_settings(recipe, name, spec, stage_dir), spec, name))
    for stage_dir, settings, spec, _ in plan:
        _check_unchanged(stage_dir, settings, spec)

    size, measure = None, None
    if main:
        if not (out / RECIPE_FILE).is_file():  # a pipeline directory this command began is resumed
            check_output(out, "run", [recipe.start] if recipe.start else [], kind="dir")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        dataset = open_source(base.data.spec).dataset(recipe.report.split, cache=True)
        size = tuple(recipe.report.size) if recipe.report.size else tuple(dataset.read(0)[1].shape)
        device = resolve_device(recipe.report.device)

        def measure(model_dir: Path, artifact: str | None = None) -> dict:
            return measure_model_dir(Path(model_dir), dataset, size, device, artifact)

    rows, models, upstream_ran, previous = [], {}, False, None
    for stage_dir, settings, spec, name in plan:
        if spec is None:
            if main:
                start = StageResult(Path(recipe.start), None, {"model": recipe.start})
                rows.append(_finish(stage_dir, settings, log, lambda: (start, measure(recipe.start))))
                models[stage_dir.name] = recipe.start
            previous = recipe.start
            distributed.barrier(process)
            continue
        rerun = upstream_ran and stage_dir.exists()
        done = not rerun and (stage_dir / STAGE_METRICS).is_file()
        upstream_ran = upstream_ran or not done
        kind = STAGES[spec.stage]
        context = StageContext(work_dir=stage_dir, data=spec_record(base.data.spec),
                               split=recipe.report.split, size=size, train=recipe.train, log=log)
        output = stage_dir / kind.output_name(spec)
        if main:
            if rerun:
                log(f"stage {stage_dir.name}: built on an earlier stage that ran again, so it runs again too")
                shutil.rmtree(stage_dir)

            def work(spec=spec, output=output, source=previous, context=context):
                result = run_stage(spec, source, output, context)
                return result, measure(result.model_dir, result.artifact)

            row = _finish(stage_dir, settings, log, work)
            rows.append(row)
            models[stage_dir.name] = row["artifact"] or row["model_dir"]
        elif not done and kind.every_rank:
            run_stage(spec, previous, output, context)
        previous = previous if kind.hands_on_source else str(output)
        distributed.barrier(process)
    if not main:
        return None
    log(f"timing {len(models)} models side by side at {size[0]}x{size[1]}")
    latencies = measure_latencies(models, size, recipe.report.latency_runs)
    report = build_report(recipe.name, rows, latencies, recipe.report.split, command, recipe.report.max_class_drop)
    for stage, line in zip(report["stages"][1:], class_drop_lines(report)):
        if stage["class_drops"]:
            log(f"class check: {line}")
    atomic_write_json(out / REPORT_JSON, report)
    atomic_write_text(out / REPORT_MD, report_markdown(report, stage_pictures(out, rows, recipe.report.split)))
    return report


def stage_settings(recipe: Recipe, name: str, spec: Stage, stage_dir: Path) -> dict:
    """What the stage's result depends on, for the changed-settings check on resume."""
    settings = spec.model_dump(mode="json")
    if isinstance(spec, TrainStage):
        config = stage_train_config(recipe.train, spec, stage_dir, None, f"stages.{name}.train")
        settings["train"] = _result_settings(config.model_dump(mode="json"))
    settings["report_split"] = recipe.report.split  # metrics.json holds measurements on this split
    return settings


def _result_settings(config: dict) -> dict:
    """A training config (dumped) without the keys that do not change what it trains: those
    ``edgeseg train --resume`` may change, and where the model starts from."""
    settings = copy.deepcopy(config)
    for key in (*RESUME_FREE_KEYS, "model.init_from"):
        section, _, name = key.rpartition(".")
        part = settings.get(section) if section else settings
        if isinstance(part, dict):
            part.pop(name, None)
    return settings


def _with_keys_added_since(recorded: dict, current: dict, schema: type[BaseModel]) -> dict:
    """``recorded`` plus every key it lacks that ``schema`` has added since, where the current
    value is that key's default (so it cannot have changed what the stage made)."""
    upgraded = dict(recorded)
    for key, value in current.items():
        field = schema.model_fields.get(key)
        if field is None:
            continue
        nested = model_in(field.annotation)
        if key not in recorded and not field.is_required():
            if to_jsonable_python(field.get_default(call_default_factory=True), by_alias=False) == value:
                upgraded[key] = value
        elif nested is not None and isinstance(value, dict) and isinstance(recorded.get(key), dict):
            upgraded[key] = _with_keys_added_since(recorded[key], value, nested)
    return upgraded


def _check_unchanged(stage_dir: Path, settings: dict, spec: Stage | None) -> None:
    spec_file = stage_dir / STAGE_SPEC
    if spec_file.is_file() and _did_work(stage_dir):
        recorded = json.loads(spec_file.read_text(encoding="utf-8"))
        if spec is not None:
            recorded = _with_keys_added_since(recorded, settings, type(spec))
            if isinstance(spec, TrainStage) and isinstance(recorded.get("train"), dict):
                recorded["train"] = _with_keys_added_since(_result_settings(recorded["train"]), settings["train"],
                                                           TrainConfig)
        if recorded.get("report_split") is None:  # a directory older than the key
            recorded["report_split"] = settings["report_split"]
        if recorded != settings:
            raise ConfigError(f"{stage_dir}: this stage ran with other settings (changed: "
                              f"{', '.join(_changed_keys(recorded, settings))}); "
                              f"delete {stage_dir} to run it (and the stages after it) again")


def _did_work(stage_dir: Path) -> bool:
    """Whether a stage left something a rerun would build on (its metrics.json, or a training
    state under it); one that failed before that is simply redone with the new settings."""
    return (stage_dir / STAGE_METRICS).is_file() or next(stage_dir.rglob(TRAIN_STATE), None) is not None


def _finish(stage_dir: Path, settings: dict, log: Log, work) -> dict:
    """Skip a finished stage, or run ``work`` and record its metrics.json."""
    metrics_file, spec_file = stage_dir / STAGE_METRICS, stage_dir / STAGE_SPEC
    if metrics_file.is_file():
        log(f"stage {stage_dir.name}: done before, skipped")
        return json.loads(metrics_file.read_text(encoding="utf-8"))
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_file, settings)
    log(f"stage {stage_dir.name}: started")
    started = time.perf_counter()
    result, measurements = work()
    details = dict(result.metrics)
    row = {"dir": stage_dir.name, "kind": settings["stage"], "seconds": details.pop("seconds", None),
           "measure_seconds": None, **details, "model_dir": str(result.model_dir),
           "artifact": str(result.artifact) if result.artifact else None, "measurements": measurements}
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
