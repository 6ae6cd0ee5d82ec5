"""The ``edgeseg`` command: parse, call, print. No logic lives here. The single-step stage
commands (fold-bn, threshold, prune, quantize, export) are in cli_stages.py."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import typer
from rich.table import Table

from edgeseg import __version__
from edgeseg import cli_seed_tools, cli_stages  # noqa: F401  (register the stage and seed-tool commands)
from edgeseg.cli_app import (DeviceOption, ThreadsOption, TTAOption, WorkersOption, after_warmup, app, data_app, out,
                             set_threads, with_tta)
from edgeseg.errors import EdgesegError


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def print_metrics(result: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("acc %", justify="right")
    for name, iou in result["per_class_iou"].items():
        table.add_row(name, _pct(iou), _pct(result["per_class_acc"][name]))
    table.add_section()
    table.add_row("mIoU", _pct(result["miou"]), _pct(result["mean_acc"]))
    table.add_row("pixel acc", _pct(result["pixel_acc"]), "")
    out.print(table)


@app.command("train", context_settings={"allow_extra_args": False})
def train_command(
    config: Optional[Path] = typer.Argument(None, help="YAML config (defaults when omitted)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. epochs=5"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="run directory to continue from its last/ state"),
    defaults: bool = typer.Option(False, "--defaults", help="print every config key with its default and exit"),
) -> None:
    """Train a model; prints the run directory (config.yaml, metrics.csv, tb/, last/, best/).

    Multi-GPU / multi-node: torchrun --nproc_per_node=N -m edgeseg train CONFIG."""
    from edgeseg.training.config import defaults_yaml, load_train_config
    from edgeseg.training.loop import train

    if defaults:
        out.file.write(defaults_yaml())
        return

    if config is not None and "=" in str(config):
        overrides = [str(config), *(overrides or [])]
        config = None
    def log(line: str) -> None:
        out.print(line, markup=False, soft_wrap=True)
        out.file.flush()

    if resume is not None:  # only keys that cannot change the results may differ from the run's config.yaml
        from edgeseg.training.config import resume_config

        loaded = resume_config(resume, config, overrides or [])
    else:
        loaded = load_train_config(config, overrides or [])
    result = train(loaded, resume_dir=resume, log=log)
    if result.is_main:
        out.print(f"best val mIoU {result.best_miou:.4f}")
        out.print(str(result.run_dir))


@app.command("folds")
def folds_command(
    config: Path = typer.Argument(..., help="YAML training config"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. epochs=5"),
    groups: Optional[str] = typer.Option(None, "--groups", help="comma-separated groups to hold out (default: "
                                                                "every group of train+val)"),
    ordinary: bool = typer.Option(True, "--ordinary/--no-ordinary", help="also train on the ordinary train split "
                                                                          "and score its val split"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds: each fold trained once per "
                                                              "seed, its mIoU the mean (default: the config's seed)"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the table as JSON"),
    force: bool = typer.Option(False, "--force", help="replace --json even if edgeseg folds did not write it"),
) -> None:
    """Leave-one-group-out validation: train CONFIG once per held-out group (CamVid: per
    sequence; other data: data.spec.group_by) and print each fold's mIoU, their mean and
    spread, and the ordinary val mIoU. mIoU is the last epoch's model (nothing chosen on the
    scored images); the best epoch's is shown beside it. Runs and folds.json go to
    RUNS_DIR/NAME-folds/; run it again to continue an interrupted one."""
    from edgeseg.errors import ConfigError
    from edgeseg.fileio import atomic_write_json, check_output
    from edgeseg.layout import FOLDS_JSON
    from edgeseg.reports import print_folds
    from edgeseg.training.config import load_train_config
    from edgeseg.training.folds import folds_dir, run_folds

    if json_file:
        check_output(json_file, "folds", [config], force, kind="file", flag="--json")
    loaded = load_train_config(config, overrides or [])
    chosen = [g.strip() for g in groups.split(",") if g.strip()] if groups else None
    try:
        seed_list = [int(v) for v in seeds.split(",") if v.strip()] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds: expected whole numbers separated by commas, got '{seeds}'") from None
    result = run_folds(loaded, chosen, ordinary, seed_list, log=lambda line: out.print(line, markup=False,
                                                                                       soft_wrap=True))
    print_folds(result, f"{config}: leave-one-group-out (groups by '{result.rule}')", out)
    for path in (folds_dir(loaded) / FOLDS_JSON, json_file):
        if path:
            atomic_write_json(path, {"written_by": "folds", **result.as_json()})


@app.command("run")
def run_command(
    recipe: Path = typer.Argument(..., help="YAML recipe: a train section and the stages in order"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. stages.dense.train.epochs=5"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="pipeline directory (default: the recipe's out_dir)"),
) -> None:
    """Run a staged pipeline (train, l1, threshold, sparse, prune, fold-bn, quantize, export);
    resumable: run it again to finish an interrupted one. Writes report.md and report.json in
    the pipeline directory. Under torchrun (torchrun --nproc_per_node=N -m edgeseg run R) the
    training stages run on every process, the other stages on rank 0."""
    from edgeseg.layout import REPORT_MD
    from edgeseg.pipeline import load_recipe, run_pipeline

    items = list(overrides or []) + ([f"out_dir={out_dir}"] if out_dir else [])
    loaded, stages = load_recipe(recipe, items)
    command = " ".join(["edgeseg run", str(recipe), *items])
    report = run_pipeline(loaded, stages, command, log=lambda line: out.print(line, markup=False, soft_wrap=True))
    if report is None:  # a torchrun process other than rank 0
        return
    out.print((loaded.directory / REPORT_MD).read_text(encoding="utf-8"), markup=False, soft_wrap=True)
    out.print(f"pipeline directory: {loaded.directory}")


@app.command("init")
def init_command(
    output: Path = typer.Option(Path("config.yaml"), "-o", "--output", help="config file to write"),
    name: Optional[str] = typer.Option(None, "--name"),
    data_format: Optional[str] = typer.Option(None, "--format", help="camvid, cityscapes, voc, folder, list, synthetic"),
    path: Optional[str] = typer.Option(None, "--path", help="dataset path"),
    val_fraction: Optional[str] = typer.Option(None, "--val-fraction"),
    model: Optional[str] = typer.Option(None, "--model"),
    crop: Optional[str] = typer.Option(None, "--crop", help="'HEIGHT WIDTH'"),
    batch_size: Optional[str] = typer.Option(None, "--batch-size"),
    epochs: Optional[str] = typer.Option(None, "--epochs"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer"),
    lr: Optional[str] = typer.Option(None, "--lr"),
    schedule: Optional[str] = typer.Option(None, "--schedule"),
    augment: Optional[str] = typer.Option(None, "--augment", help="comma separated: flip,scale,color"),
    no_input: bool = typer.Option(False, "--no-input", help="never ask: defaults for anything not given"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Answer a few questions (or give them as options) and get a training config."""
    import yaml

    from edgeseg.errors import ConfigError
    from edgeseg.fileio import atomic_write_text
    from edgeseg.init_config import ask_all, build_config

    if output.exists() and not force:
        raise ConfigError(f"{output}: already exists (use --force to overwrite)")
    given = {"name": name, "format": data_format, "path": path, "val_fraction": val_fraction, "model": model,
             "crop": crop, "batch_size": batch_size, "epochs": epochs, "optimizer": optimizer, "lr": lr,
             "schedule": schedule, "augment": augment}

    def ask(question) -> str:
        if no_input:
            return question.default
        options = f" ({'/'.join(question.choices)})" if question.choices else ""
        while True:
            answer = str(typer.prompt(question.text + options, default=question.default)).strip()
            if not question.choices or answer in question.choices:
                return answer
            out.print(f"choose one of: {', '.join(question.choices)}")

    try:
        config = build_config(ask_all(given, ask))
    except ValueError as err:
        raise ConfigError(f"edgeseg init: {str(err).splitlines()[0]}") from None
    atomic_write_text(output, yaml.safe_dump(config, sort_keys=False))
    out.print(f"wrote {output}; train with: edgeseg train {output}")


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., help="model directory, .onnx file or deploy bundle; with --watch/--all a run "
                                           "directory"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset spec, e.g. camvid:PATH or synthetic (for a run "
                                                            "directory: the run's own by default)"),
    split: Optional[str] = typer.Option(None, "--split", help="default: val (for a run directory: its val_split)"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the metrics and confusion matrix as JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="draw the confusion matrix into this PNG"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    pad_to_shape: Optional[Tuple[int, int]] = typer.Option(
        None, "--pad-to-shape", help="pad every image (bottom/right) to exactly H W before the model, as a "
                                     "fixed-shape deployment does, and crop the prediction back"),
    watch: bool = typer.Option(False, "--watch", help="RUN_DIR: evaluate each periodic checkpoint (save_every) as it "
                                                      "appears, until the run ends"),
    all_checkpoints: bool = typer.Option(False, "--all", help="RUN_DIR: evaluate every kept checkpoint, then stop"),
    eval_dir: Optional[Path] = typer.Option(None, "--eval-dir", help="--watch/--all: where TensorBoard events and "
                                                                     "evaluations.csv go (default RUN_DIR/eval)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="--watch: stop after this many seconds "
                                                                           "even if the run has not ended"),
    device: str = DeviceOption,
    force: bool = typer.Option(False, "--force", help="replace --json/--plot even if edgeseg eval did not write them"),
    tta: Optional[str] = TTAOption,
) -> None:
    """Evaluate MODEL on a dataset split at full resolution (mIoU, accuracies, per-class IoU,
    confusion matrix: rows ground truth, columns prediction). With --watch or --all, follow a
    training run's periodic checkpoints instead."""
    from edgeseg.data.spec import open_dataset
    from edgeseg.errors import ConfigError
    from edgeseg.evaluation import evaluate
    from edgeseg.fileio import atomic_write_json, check_output
    from edgeseg.predict.predictors import load_predictor, with_pad_to_shape
    from edgeseg.runtime import resolve_device

    if watch or all_checkpoints:
        from edgeseg.training.eval_watch import watch_run

        if watch and all_checkpoints:
            raise ConfigError("eval: give --watch or --all, not both")
        if json_file or plot:
            raise ConfigError("eval: --json and --plot evaluate one model; --watch/--all write RUN_DIR/eval instead")
        result = watch_run(model, follow=watch, eval_dir=eval_dir, data=data, split=split,
                           device=resolve_device(device), batch_size=batch_size, pad_to_shape=pad_to_shape,
                           timeout=timeout, force=force, log=lambda line: out.print(line, markup=False))
        out.print(f"evaluated {len(result.evaluated)} checkpoints ({result.ended_by}); wrote {result.eval_dir}")
        return
    if data is None:
        raise ConfigError("eval: --data is required (a run directory is followed with --watch or --all)")
    split = split or "val"
    for output, flag in ((json_file, "--json"), (plot, "--plot")):
        if output:
            check_output(output, "eval", [model], force, kind="file", flag=flag)
    predictor = with_tta(with_pad_to_shape(load_predictor(model, resolve_device(device)), pad_to_shape), tta)
    result = evaluate(predictor, open_dataset(data, split), batch_size=batch_size)
    result["model"] = str(model)
    result["data"] = data
    if tta:
        result["tta"] = str(predictor.spec)
    print_metrics(result, f"{model} on {data} [{split}], {result['num_images']} images"
                          f"{f', tta {predictor.spec}' if tta else ''}")
    if json_file:
        atomic_write_json(json_file, {"written_by": "eval", **result})
    if plot:
        from edgeseg.fileio import atomic_write_bytes, mark_png
        from edgeseg.plots import confusion

        title = f"{model} on {data} [{split}], {result['num_images']} images"
        atomic_write_bytes(plot, mark_png(confusion(result["confusion"], list(result["per_class_iou"]), title), "eval"))
        out.print(f"wrote {plot}")


@app.command("predict")
def predict_command(
    model: Path = typer.Argument(..., help="model directory, .onnx file or deploy bundle"),
    sources: List[str] = typer.Argument(..., help="images, folders, glob patterns, list files, videos or camera "
                                                  "indices"),
    out_dir: Path = typer.Option(Path("predictions"), "--out", help="output folder"),
    with_overlay: bool = typer.Option(False, "--overlay", help="also write colour overlays"),
    device: str = DeviceOption,
    force: bool = typer.Option(False, "--force", help="write into --out even over files edgeseg did not write"),
    threads: Optional[int] = ThreadsOption,
    workers: int = WorkersOption,
    tta: Optional[str] = TTAOption,
    pad_to_shape: Optional[Tuple[int, int]] = typer.Option(
        None, "--pad-to-shape", help="pad every image (bottom/right) to exactly H W before the model (fixed-shape "
                                     "inference) and crop the prediction back"),
) -> None:
    """Write a paletted label PNG (and optionally an overlay) for every input image; video
    files and camera indices give an overlay video at the source frame rate."""
    from edgeseg.fileio import check_files, check_output, mark_output
    from edgeseg.predict.predictors import load_predictor, with_pad_to_shape
    from edgeseg.predict.outputs import predict_images, predict_video
    from edgeseg.predict.sources import expand_sources, is_video_source, output_names
    from edgeseg.runtime import resolve_device

    videos = [source for source in sources if is_video_source(source)]
    images = [source for source in sources if not is_video_source(source)]
    paths = expand_sources(images) if images else []
    inputs = [*(Path(s) for s in images if Path(s).is_dir()), *paths, *(Path(v) for v in videos if not v.isdigit())]
    check_output(out_dir, "predict", [model, *inputs], force, kind="dir")
    names = output_names(paths) if paths else []
    files = [f"{n}.png" for n in names] + [f"{n}_overlay.png" for n in names if with_overlay]
    files += [f"{'camera' + v if v.isdigit() else Path(v).stem}_overlay.mp4" for v in videos]
    check_files(out_dir, files, "predict", force)
    set_threads(threads)
    predictor = with_tta(with_pad_to_shape(load_predictor(model, resolve_device(device)), pad_to_shape), tta)
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_output(out_dir, "predict", files)  # before writing: an interrupted run's files are still ours
    for video in videos:
        result = predict_video(predictor, video, out_dir, workers=workers)
        out.print(f"wrote {result.overlay_file}: {result.frames} frames at {result.fps:.1f} fps "
                  f"(median {after_warmup(result.milliseconds):.1f} ms per frame on {predictor.device})")
    if images:
        started = time.perf_counter()
        results = predict_images(predictor, paths, out_dir, with_overlay, workers)
        seconds = time.perf_counter() - started
        model_ms = after_warmup([r.milliseconds for r in results])
        out.print(f"wrote {len(results)} label maps to {out_dir} in {seconds:.1f} s, {len(results) / seconds:.1f} "
                  f"images/s end to end (the model: median {model_ms:.1f} ms per image on {predictor.device}"
                  f"{', first image left out as warm-up' if len(results) > 1 else ''})")


@app.command("info")
def info_command(
    model: Path = typer.Argument(..., help="model directory, .onnx file or deploy bundle"),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help="input height and width (default: the "
                                                                        "model's)"),
) -> None:
    """Layers, parameters, MACs at the model's input size, and weight sparsity; for an ONNX
    file or bundle, its convs as the file holds them, its operators and its metadata."""
    from edgeseg.layout import CONFIG_NAME

    if model.suffix.lower() == ".onnx" or (model.is_dir() and not (model / CONFIG_NAME).exists()):
        from edgeseg.export.onnx_profile import profile_onnx
        from edgeseg.reports import print_onnx_profile

        print_onnx_profile(profile_onnx(model), out)
        return
    from edgeseg.models import load_model_dir
    from edgeseg.models.profile import profile_model
    from edgeseg.reports import print_profile

    loaded = load_model_dir(model)
    input_size = tuple(size) if size else tuple(loaded.config.input_size)
    print_profile(profile_model(loaded.model, input_size), loaded.config, out)


@app.command("bench")
def bench_command(
    models: List[Path] = typer.Argument(..., help="model directories, .onnx files or bundles (timed side by side)"),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help="input height and width"),
    runs: int = typer.Option(30, "--runs", min=1),
    images: Optional[Path] = typer.Option(None, "--images", help="also time end to end on this folder of images"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON"),
    device: str = DeviceOption,
    force: bool = typer.Option(False, "--force", help="replace --json even if edgeseg bench did not write it"),
    threads: Optional[int] = ThreadsOption,
    workers: int = WorkersOption,
    tta: Optional[str] = typer.Option(None, "--tta", help="also time each model with this test-time augmentation "
                                                          "(e.g. flip,0.75,1.25), interleaved with it without"),
) -> None:
    """Latency (median, p90) and FPS at batch 1; several models are timed interleaved, so
    their ratios hold on a busy machine. With --images: end-to-end FPS including decoding,
    pre-processing, argmax and PNG encoding. With --tta: each model also with test-time
    augmentation, so its cost shows as the ratio of two rows."""
    from edgeseg.benchmark import end_to_end, measure_side_by_side
    from edgeseg.fileio import atomic_write_json, check_output
    from edgeseg.predict.predictors import load_predictor
    from edgeseg.predict.sources import expand_sources
    from edgeseg.runtime import resolve_device

    if json_file:
        check_output(json_file, "bench", models, force, kind="file", flag="--json")
    set_threads(threads)
    predictors = {str(path): load_predictor(path, resolve_device(device)) for path in models}
    if tta:
        predictors.update({f"{name} +tta": with_tta(predictor, tta) for name, predictor in list(predictors.items())})
    first = next(iter(predictors.values()))
    input_size = tuple(size) if size else tuple(getattr(first, "size", None) or first.config.input_size)
    results = measure_side_by_side(predictors, input_size, runs=runs)
    table = Table(title=f"latency at {input_size[0]}x{input_size[1]}, batch 1, {runs} runs interleaved")
    for column in ("model", "backend", "median ms", "p90 ms", "FPS", "end-to-end FPS"):
        table.add_column(column, justify="left" if column in ("model", "backend") else "right")
    paths = expand_sources([str(images)]) if images else []
    for name, predictor in predictors.items():
        row = results[name]
        if paths:
            row["end_to_end"] = end_to_end(predictor, paths, workers=workers)
        table.add_row(name, row["backend"], f"{row['latency_ms']:.1f}", f"{row['latency_ms_p90']:.1f}",
                      f"{row['fps']:.1f}", f"{row['end_to_end']['fps']:.1f}" if paths else "-")
    out.print(table)
    if json_file:
        atomic_write_json(json_file, {"written_by": "bench",
                                      **(results[str(models[0])] if len(predictors) == 1 else {"models": results})})


@data_app.command("check")
def data_check(
    spec: str = typer.Argument(..., help="dataset spec: camvid:PATH, voc:PATH, folder:PATH, list:FILE, synthetic, x.yaml"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="split(s) to check (default: all)"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    show: int = typer.Option(20, "--show", help="problems listed per split"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="draw the class shares per split into this PNG"),
    force: bool = typer.Option(False, "--force", help="replace --json/--plot even if edgeseg did not write them"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="regex on file names naming each image's group "
                                                                     "(sequence): count val images sharing one with train"),
) -> None:
    """The label doctor: class shares, suggested class weights and every problem found."""
    from edgeseg.data.doctor import check_dataset
    from edgeseg.data.spec import open_source, with_group_rule
    from edgeseg.fileio import atomic_write_bytes, atomic_write_json, check_output, mark_png
    from edgeseg.reports import doctor_json, print_doctor

    root = spec.partition(":")[2] if ":" in spec else (spec if spec.endswith((".yaml", ".yml")) else "")
    for output, flag in ((json_file, "--json"), (plot, "--plot")):
        if output:
            check_output(output, "data check", [root] if root else [], force, kind="file", flag=flag)
    report = check_dataset(open_source(with_group_rule(spec, group_by) if group_by else spec), split or None)
    print_doctor(report, out, show)
    if json_file:
        atomic_write_json(json_file, {"written_by": "data check", **doctor_json(report)})
    if plot:
        from edgeseg.plots import class_shares

        atomic_write_bytes(plot, mark_png(class_shares(report), "data check"))
        out.print(f"wrote {plot}")
    if not report.clean:
        raise typer.Exit(1)


@data_app.command("lists")
def data_lists(
    kind: str = typer.Argument(..., help="dataset layout (cityscapes)"),
    root: Path = typer.Argument(..., help="dataset root"),
    out_dir: Path = typer.Option(Path("."), "--out", help="where to write the list files"),
) -> None:
    """Write image and label list files per split, as caffe-jacinto's list script did."""
    from edgeseg.data.lists import write_lists

    for path in write_lists(kind, root, out_dir):
        out.print(f"wrote {path}")


@app.command("demo")
def demo_command(
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value changes to the demo's recipe, e.g. "
                                                           "train.epochs=10 stages.sparse.train.epochs=5"),
    out_dir: Path = typer.Option(Path("runs/demo"), "--out"),
) -> None:
    """Run the pipeline on the built-in synthetic street scenes."""
    from edgeseg.demo import run_demo

    run_demo(out_dir, out, list(overrides or []))


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback is warned about"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    workdir: Path = typer.Option(Path("edgeseg-work"), "--workdir", help="where datasets and jobs are kept"),
    data_roots: Optional[List[Path]] = typer.Option(None, "--data-root", help="a folder the server may read data "
                                                                              "from (repeatable)"),
    token: Optional[str] = typer.Option(None, "--token", envvar="EDGESEG_SERVE_TOKEN",
                                        help="access token every request must carry (?token=, once per browser)"),
) -> None:
    """The web application: datasets, training jobs with live curves, explore, test, downloads."""
    from edgeseg.serve import run_server

    run_server(host, port, workdir, list(data_roots or []), token, lambda line: print(line, file=sys.stderr))


@app.command("version")
def version_command() -> None:
    """Print the edgeseg version."""
    out.print(__version__)


def main() -> None:
    """Console entry point: user errors print one line to stderr and exit 2."""
    try:
        app()
    except EdgesegError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
