"""The ``edgeseg`` command: parse, call, print. No logic lives here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgeseg import __version__
from edgeseg.errors import EdgesegError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train, compress, export and run small fast segmentation models.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools: the label doctor and list files.")
app.add_typer(data_app, name="data")
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N")


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
    from edgeseg.train.config import defaults_yaml, load_train_config
    from edgeseg.train.loop import train

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
        from edgeseg.train.config import resume_config

        loaded = resume_config(resume, config, overrides or [])
    else:
        loaded = load_train_config(config, overrides or [])
    result = train(loaded, resume_dir=resume, log=log)
    if result.is_main:
        out.print(f"best val mIoU {result.best_miou:.4f}")
        out.print(str(result.run_dir))


@app.command("run")
def run_command(
    recipe: Path = typer.Argument(..., help="YAML recipe: a train section and the stages in order"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. stages.dense.train.epochs=5"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="pipeline directory (default: the recipe's out_dir)"),
) -> None:
    """Run a staged pipeline (train, l1, threshold, sparse, fold-bn); resumable: run it again
    to finish an interrupted one. Writes report.md and report.json in the pipeline directory."""
    from edgeseg.pipeline import load_recipe, run_pipeline

    items = list(overrides or []) + ([f"out_dir={out_dir}"] if out_dir else [])
    loaded, stages = load_recipe(recipe, items)
    command = " ".join(["edgeseg run", str(recipe), *items])
    run_pipeline(loaded, stages, command, log=lambda line: out.print(line, markup=False, soft_wrap=True))
    out.print((loaded.directory / "report.md").read_text(encoding="utf-8"), markup=False, soft_wrap=True)
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
    model: Path = typer.Argument(..., help="model directory, .onnx file or deploy bundle"),
    data: str = typer.Option(..., "--data", help="dataset spec, e.g. camvid:PATH or synthetic"),
    split: str = typer.Option("val", "--split"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the metrics as JSON"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    device: str = DeviceOption,
) -> None:
    """Evaluate MODEL on a dataset split at full resolution (mIoU, accuracies, per-class IoU)."""
    from edgeseg.data.spec import open_dataset
    from edgeseg.evaluate import evaluate
    from edgeseg.fileio import atomic_write_json
    from edgeseg.inference import load_predictor
    from edgeseg.runtime import resolve_device

    predictor = load_predictor(model, resolve_device(device))
    result = evaluate(predictor, open_dataset(data, split), batch_size=batch_size)
    result["model"] = str(model)
    result["data"] = data
    print_metrics(result, f"{model} on {data} [{split}], {result['num_images']} images")
    if json_file:
        atomic_write_json(json_file, result)


@app.command("predict")
def predict_command(
    model: Path = typer.Argument(..., help="model directory, .onnx file or deploy bundle"),
    sources: List[str] = typer.Argument(..., help="images, folders, glob patterns, list files, videos or camera "
                                                  "indices"),
    out_dir: Path = typer.Option(Path("predictions"), "--out", help="output folder"),
    with_overlay: bool = typer.Option(False, "--overlay", help="also write colour overlays"),
    device: str = DeviceOption,
) -> None:
    """Write a paletted label PNG (and optionally an overlay) for every input image; video
    files and camera indices give an overlay video at the source frame rate."""
    from edgeseg.inference import load_predictor
    from edgeseg.predict import expand_sources, is_video_source, predict_images, predict_video
    from edgeseg.runtime import resolve_device

    predictor = load_predictor(model, resolve_device(device))
    videos = [source for source in sources if is_video_source(source)]
    images = [source for source in sources if not is_video_source(source)]
    for video in videos:
        result = predict_video(predictor, video, out_dir)
        times = sorted(result.milliseconds)
        out.print(f"wrote {result.overlay_file}: {result.frames} frames at {result.fps:.1f} fps "
                  f"(median {times[len(times) // 2]:.1f} ms per frame on {predictor.device})")
    if images:
        results = predict_images(predictor, expand_sources(images), out_dir, with_overlay)
        times = sorted(r.milliseconds for r in results)
        out.print(f"wrote {len(results)} label maps to {out_dir} "
                  f"(median {times[len(times) // 2]:.1f} ms per image on {predictor.device})")


@app.command("info")
def info_command(
    model: Path = typer.Argument(..., help="model directory"),
    size: Optional[List[int]] = typer.Option(None, "--size", help="input height and width (default: the model's)"),
) -> None:
    """Layers, parameters, MACs at the model's input size, and weight sparsity."""
    from edgeseg.models import load_model_dir
    from edgeseg.models.profile import profile_model
    from edgeseg.reports import print_profile

    if size is not None and len(size) != 2:
        raise typer.BadParameter("give --size twice: --size H --size W")
    loaded = load_model_dir(model)
    input_size = tuple(size) if size else tuple(loaded.config.input_size)
    print_profile(profile_model(loaded.model, input_size), loaded.config, out)


@app.command("fold-bn")
def fold_bn_command(
    model: Path = typer.Argument(..., help="model directory"),
    out_dir: Path = typer.Option(..., "--out", help="the folded model directory to write"),
    data: Optional[str] = typer.Option(None, "--data", help="check on real images of this dataset spec"),
    split: str = typer.Option("val", "--split"),
    images: int = typer.Option(4, "--images", min=1, help="how many images to check on"),
) -> None:
    """Merge every BatchNorm into the conv before it (caffe-jacinto's "optimize"); checks the
    folded model against the original and prints the largest logit difference."""
    from edgeseg.compress.bn_fold import fold_model_dir
    from edgeseg.compress.sample_images import real_check_images

    check = real_check_images(model, data, split, images) if data else None
    metrics = fold_model_dir(model, out_dir, check)
    where = f"{metrics['check_images']} {'images of ' + data if data else 'random inputs'}"
    out.print(f"folded {metrics['folded_into_conv']} BatchNorms into convs, {metrics['made_affine']} into "
              f"per-channel affines; max |logit difference| {metrics['max_abs_diff']:.2e} on {where}; "
              f"zero weights {metrics['zeros_before']} -> {metrics['zeros_after']}; wrote {out_dir}")


@app.command("threshold")
def threshold_command(
    model: Path = typer.Argument(..., help="model directory"),
    out_dir: Path = typer.Option(..., "--out", help="the thresholded model directory to write"),
    fraction_low: float = typer.Option(0.40, "--fraction-low", help="target zero fraction of small layers"),
    fraction_mid: float = typer.Option(0.80, "--fraction-mid", help="... of layers with ni >= 32 and no >= 32"),
    fraction_high: float = typer.Option(0.80, "--fraction-high", help="... of layers with ni >= 256 and no >= 512"),
    value_max: float = typer.Option(0.2, "--value-max", help="absolute cap on a threshold"),
    value_maxratio: float = typer.Option(0.2, "--value-maxratio", help="cap as a fraction of the layer's max|w|"),
    step_factor: float = typer.Option(1e-6, "--step-factor", help="threshold grid step as a fraction of max|w|"),
    per_channel: bool = typer.Option(False, "--per-channel/--per-layer", help="one threshold per output channel"),
) -> None:
    """Zero the smallest conv weights to a target sparsity per layer (caffe-jacinto's threshold
    tool: low/mid/high channel-count buckets, capped thresholds)."""
    from edgeseg.compress.threshold import ThresholdConfig, threshold_model_dir
    from edgeseg.schema import validate

    config = validate(ThresholdConfig, dict(
        fraction_low=fraction_low, fraction_mid=fraction_mid, fraction_high=fraction_high, value_max=value_max,
        value_maxratio=value_maxratio, step_factor=step_factor, per_channel=per_channel), "threshold options")
    rows, metrics = threshold_model_dir(model, out_dir, config)
    table = Table(title=f"threshold {'per output channel' if per_channel else 'per layer'}")
    for column in ("layer", "bucket", "target %", "achieved %", "threshold" + (" (max)" if per_channel else ""),
                   "capped"):
        table.add_column(column, justify="left" if column in ("layer", "bucket") else "right")
    for row in rows:
        capped = f"{row.capped_units}/{row.units}" if per_channel else ("yes" if row.capped_units else "no")
        table.add_row(row.name, row.bucket, f"{100 * row.target:.1f}", f"{100 * row.achieved:.2f}",
                      f"{row.threshold:.3g}", capped)
    out.print(table)
    out.print(f"conv weight sparsity {100 * metrics['sparsity_before']:.2f} % -> "
              f"{100 * metrics['sparsity_after']:.2f} %; wrote {out_dir}")


@app.command("quantize")
def quantize_command(
    model: Path = typer.Argument(..., help="a float model directory"),
    out_dir: Path = typer.Option(..., "--out", help="the quantized model directory to write"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset spec (default: the one the model was trained on)"),
    scheme: str = typer.Option("float", "--scheme", help="float (per-channel weight scales), power-of-two, or low-bit "
                                                         "(Blueoil: 1-bit weights, 2-bit activations in [0, 2])"),
    weight_bits: Optional[int] = typer.Option(None, "--weight-bits", help="default: 8 (low-bit: 1)"),
    activation_bits: Optional[int] = typer.Option(None, "--activation-bits", help="default: 8 (low-bit: 2)"),
    activation_max: float = typer.Option(2.0, "--activation-max", help="low-bit: activations clipped to [0, this]"),
    target: str = typer.Option("x86", "--target", help="x86 (weights |q| <= 63: no saturation without VNNI) "
                                                         "or full-range"),
    calibration: int = typer.Option(20, "--calibration-batches", help="training images the ranges are tracked on"),
    epochs: int = typer.Option(0, "--epochs", min=0, help="quantization-aware fine-tuning epochs (0: calibration only)"),
    lr: float = typer.Option(1e-5, "--lr", help="fine-tuning learning rate"),
    train_config: Optional[Path] = typer.Option(
        None, "--train-config", help="training config whose data, augmentation, batch and loss the fine-tuning uses "
                                     "(its epochs, lr and evaluation interval are replaced)"),
    stochastic: bool = typer.Option(False, "--stochastic-rounding", help="power-of-two: stochastic rounding in training"),
    track_ranges: bool = typer.Option(False, "--track-ranges", help="keep tracking activation ranges while fine-tuning"),
    float_first_layer: bool = typer.Option(False, "--float-first-layer", help="keep the first conv(s) and the input "
                                                                              "in float (Blueoil)"),
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction",
                                         help="biases absorb the mean output shift of the weight rounding"),
) -> None:
    """Quantize MODEL: fold BNs, calibrate activation ranges (post-training quantization) and
    optionally fine-tune with quantization simulated; writes snapshot_log.txt per layer."""
    from edgeseg.compress.quant import QuantizeConfig
    from edgeseg.models.model_dir import read_model_config
    from edgeseg.pipeline.quantize import run_quantize
    from edgeseg.schema import load_yaml, merge, validate

    options = dict(scheme=scheme, weight_bits=weight_bits, activation_bits=activation_bits, target=target,
                   calibration_batches=calibration, stochastic_rounding=stochastic, freeze_ranges=not track_ranges,
                   activation_max=activation_max, quantize_first_layer=False if float_first_layer else None,
                   bias_correction=bias_correction)
    quant = validate(QuantizeConfig, {k: v for k, v in options.items() if v is not None}, "quantize options")
    data = data or read_model_config(model).trained_on()
    if data is None:
        raise EdgesegError(f"{model}: no training dataset recorded; pass --data SPEC")
    finetune = None
    if epochs:
        base = dict(load_yaml(train_config) or {}) if train_config else {}
        base.pop("name", None)
        base.pop("runs_dir", None)
        finetune = merge(base, {"epochs": epochs, "optimizer": {"lr": lr}, "eval_every": 1})
    details = run_quantize(model, out_dir, quant, data, finetune, out_dir.with_name(out_dir.name + ".work"),
                           log=out.print, config_source=str(train_config or "quantize options"))
    snapshot = out_dir / "snapshot_log.txt"
    if snapshot.is_file():
        out.print(snapshot.read_text(encoding="utf-8"))
    out.print(f"wrote {out_dir}" + (f" (fine-tuned: best val mIoU {100 * details['best_val_miou']:.2f} %)"
                                    if finetune is not None else ""))


@app.command("export")
def export_command(
    model: Path = typer.Argument(..., help="model directory"),
    fmt: str = typer.Option(..., "--format", help="onnx, onnx-int8 or bundle"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="default: MODEL.onnx or MODEL-bundle/"),
    size: Optional[List[int]] = typer.Option(None, "--size", help="fixed input height and width (twice)"),
    data: Optional[str] = typer.Option(None, "--data", help="check on this dataset (default: the training one)"),
    split: str = typer.Option("val", "--split"),
    images: int = typer.Option(8, "--images", min=1, help="images the export is checked on"),
    min_agreement: float = typer.Option(0.98, "--min-agreement", help="int8: least pixel agreement with PyTorch"),
) -> None:
    """Export MODEL to ONNX (fp32 or int8) or a deploy bundle; the export is run in ONNX Runtime
    and checked against MODEL on real images before anything is written."""
    from edgeseg.compress.sample_images import labelled_images
    from edgeseg.export.onnx import Tolerances, export_onnx
    from edgeseg.models.model_dir import read_model_config

    if fmt not in ("onnx", "onnx-int8", "bundle"):
        raise EdgesegError(f"--format: unknown format '{fmt}' (onnx, onnx-int8, bundle)")
    if size is not None and len(size) != 2:
        raise typer.BadParameter("give --size twice: --size H --size W")
    config = read_model_config(model)
    data = data or config.trained_on()
    if data is None:
        raise EdgesegError(f"{model}: no training dataset recorded; pass --data SPEC for the export check")
    check = labelled_images(model, data, split, images)
    export_size = tuple(size) if size else None
    int8 = config.quantization is not None
    if fmt == "bundle":
        from edgeseg.export.bundle import write_bundle

        target = out_path or model.with_name(model.name + "-bundle")
        metrics = write_bundle(model, target, export_size, check, Tolerances(min_agreement=min_agreement))
    else:
        if (fmt == "onnx-int8") != int8:
            raise EdgesegError(f"{model}: " + ("not quantized; run 'edgeseg quantize' first" if not int8 else
                                              "is quantized; export it with --format onnx-int8"))
        target = out_path or model.with_suffix(".onnx")
        metrics = export_onnx(model, target, int8, export_size, check, Tolerances(min_agreement=min_agreement))
    quality = (f"pixel agreement {100 * metrics['agreement']:.2f} %" if int8 else
               f"max |logit difference| {metrics['max_abs_diff']:.2e}")
    if "miou_drop" in metrics:
        quality += f", mIoU {100 * metrics['exported_miou']:.2f} vs {100 * metrics['reference_miou']:.2f} %"
    out.print(f"wrote {target} ({metrics['format']}, {metrics['size'][0]}x{metrics['size'][1]}); checked on "
              f"{metrics['check_images']} images of {data} [{split}]: {quality}")


@app.command("bench")
def bench_command(
    models: List[Path] = typer.Argument(..., help="model directories, .onnx files or bundles (timed side by side)"),
    size: Optional[List[int]] = typer.Option(None, "--size", help="input height and width (twice)"),
    runs: int = typer.Option(30, "--runs", min=1),
    images: Optional[Path] = typer.Option(None, "--images", help="also time end to end on this folder of images"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON"),
    device: str = DeviceOption,
) -> None:
    """Latency (median, p90) and FPS at batch 1; several models are timed interleaved, so
    their ratios hold on a busy machine. With --images: end-to-end FPS including decoding,
    pre-processing, argmax and PNG encoding."""
    from edgeseg.benchmark import end_to_end, measure_side_by_side
    from edgeseg.fileio import atomic_write_json
    from edgeseg.inference import load_predictor
    from edgeseg.predict import expand_sources
    from edgeseg.runtime import resolve_device

    if size is not None and len(size) != 2:
        raise typer.BadParameter("give --size twice: --size H --size W")
    predictors = {str(path): load_predictor(path, resolve_device(device)) for path in models}
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
            row["end_to_end"] = end_to_end(predictor, paths)
        table.add_row(name, row["backend"], f"{row['latency_ms']:.1f}", f"{row['latency_ms_p90']:.1f}",
                      f"{row['fps']:.1f}", f"{row['end_to_end']['fps']:.1f}" if paths else "-")
    out.print(table)
    if json_file:
        atomic_write_json(json_file, results[str(models[0])] if len(models) == 1 else results)


@data_app.command("check")
def data_check(
    spec: str = typer.Argument(..., help="dataset spec: camvid:PATH, voc:PATH, folder:PATH, list:FILE, synthetic, x.yaml"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="split(s) to check (default: all)"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    show: int = typer.Option(20, "--show", help="problems listed per split"),
) -> None:
    """The label doctor: class shares, suggested class weights and every problem found."""
    from edgeseg.data.doctor import check_dataset
    from edgeseg.data.spec import open_source
    from edgeseg.reports import doctor_json, print_doctor

    report = check_dataset(open_source(spec), split or None)
    print_doctor(report, out, show)
    if json_file:
        from edgeseg.fileio import atomic_write_json

        atomic_write_json(json_file, doctor_json(report))
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
def demo_command(out_dir: Path = typer.Option(Path("runs/demo"), "--out")) -> None:
    """Run the pipeline on the built-in synthetic street scenes."""
    from edgeseg.demo import run_demo

    run_demo(out_dir, out)


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
