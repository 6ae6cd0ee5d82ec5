"""The single-step stage commands: each builds a one-stage spec from flags generated from the
stage's schema (and KEY=VALUE settings) and calls the function ``edgeseg run`` calls."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from edgeseg.cli_app import DataOption, ForceOption, OutOption, SplitOption, app, out
from edgeseg.cli_options import schema_options
from edgeseg.errors import EdgesegError
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.pipeline.specs import ExportStage, FoldStage, PruneStage, QuantizeStage, ThresholdStage


def run_single_stage(kind: str, model: Path, settings: dict, out_path: Path, data: str | dict | None, split: str,
                     force: bool, train_section: dict | None = None, needs_data: bool = False):
    """A single-step command: validate a one-stage spec, guard the output, and call the stage
    function ``edgeseg run`` calls; the output is marked as this command's."""
    from edgeseg.fileio import check_output, mark_output
    from edgeseg.models.model_dir import read_model_config
    from edgeseg.pipeline.stages import STAGES, StageContext, dataset_image_size, export_format, run_stage
    from edgeseg.schema import validate

    spec = validate(STAGES[kind].spec, {**settings, "stage": kind}, f"{kind} options")
    config = read_model_config(model)
    data = data or config.trained_on()
    if needs_data and data is None:
        raise EdgesegError(f"{model}: no training dataset recorded; pass --data SPEC")
    bundle = kind == "export" and export_format(model, spec) == "bundle"
    check_output(out_path, kind, [model], force, kind="file" if kind == "export" and not bundle else "dir")
    size = dataset_image_size(data, split) if kind == "export" and data else None
    context = StageContext(work_dir=out_path.with_name(out_path.name + ".work"), data=data, split=split, size=size,
                           train=train_section or {}, log=lambda line: out.print(line, markup=False, soft_wrap=True))
    result = run_stage(spec, model, out_path, context)
    if out_path.is_dir():
        mark_output(out_path, kind)
    return result


@app.command("fold-bn")
@schema_options(FoldStage)
def fold_bn_command(
    model: Path = typer.Argument(..., help="model directory"),
    out_dir: Path = OutOption,
    data: Optional[str] = DataOption,
    split: str = SplitOption,
    force: bool = ForceOption,
    settings: dict = None,
) -> None:
    """Merge every BatchNorm into the conv before it (caffe-jacinto's "optimize"); checks the
    folded model against the original and prints the largest logit difference."""
    run_single_stage("fold-bn", model, settings, out_dir, data, split, force)
    out.print(f"wrote {out_dir}")


@app.command("threshold")
@schema_options(ThresholdStage)
def threshold_command(
    model: Path = typer.Argument(..., help="model directory"),
    out_dir: Path = OutOption,
    force: bool = ForceOption,
    settings: dict = None,
) -> None:
    """Zero the smallest conv weights to a target sparsity per layer (caffe-jacinto's threshold
    tool: low/mid/high channel-count buckets, capped thresholds)."""
    result = run_single_stage("threshold", model, settings, out_dir, None, "val", force)
    per_channel = result.metrics["per_channel"]
    table = Table(title=f"threshold {'per output channel' if per_channel else 'per layer'}")
    for column in ("layer", "bucket", "target %", "achieved %", "threshold" + (" (max)" if per_channel else ""),
                   "capped"):
        table.add_column(column, justify="left" if column in ("layer", "bucket") else "right")
    for row in result.metrics["layers"]:
        capped = f"{row['capped_units']}/{row['units']}" if per_channel else ("yes" if row["capped_units"] else "no")
        table.add_row(row["name"], row["bucket"], f"{100 * row['target']:.1f}", f"{100 * row['achieved']:.2f}",
                      f"{row['threshold']:.3g}", capped)
    out.print(table)
    out.print(f"wrote {out_dir}")


@app.command("prune")
@schema_options(PruneStage)
def prune_command(
    model: Path = typer.Argument(..., help="a float model directory"),
    out_dir: Path = OutOption,
    data: Optional[str] = DataOption,
    split: str = SplitOption,
    compression_factor: Optional[float] = typer.Option(None, "--compression-factor",
                                                       help="ICNet's name for --keep"),
    skip: Optional[List[str]] = typer.Option(None, "--skip", help="(repeatable) "
                                             + PruneStage.model_fields["skip"].description),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG: per layer, sorted filter importances "
                                                             "and the cut-off"),
    force: bool = ForceOption,
    settings: dict = None,
) -> None:
    """Filter pruning (ICNet's compress.py): every conv keeps int(n x keep) of its filters with
    the largest norms; BatchNorms, the next convs, add groups, concats, grouped and depth-wise
    convs follow; the classifier is never pruned. With --target-macs or --target-latency-ms a
    sensitivity scan on --data's --split images chooses a keep per layer group instead (the
    scan is written beside the model and reused). Prints channels and MACs per layer."""
    from edgeseg.compress.prune import plot_model_dir
    from edgeseg.fileio import check_output

    if compression_factor is not None:
        if "keep" in settings:
            raise EdgesegError("give --keep or --compression-factor, not both")
        settings = {**settings, "keep": compression_factor}
    if skip:
        settings = {**settings, "skip": [*settings.get("skip", []), *skip]}
    if plot is not None:
        check_output(plot, "prune", [model], force, kind="file", flag="--plot")
    result = run_single_stage("prune", model, settings, out_dir, data, split, force)
    metrics = result.metrics
    how = f"keep {metrics['keep']}" if "keeps" not in metrics else "keep per layer group from the scan"
    table = Table(title=f"prune {how} ({metrics['criterion']}"
                        f"{', soft: filters zeroed, shapes kept' if metrics['soft'] else ''})")
    for column in ("layer", "channels", "MMACs before", "MMACs after"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for row in metrics["layers"]:
        table.add_row(row["name"], f"{row['channels_before']} -> {row['channels_after']}",
                      f"{row['macs_before'] / 1e6:.2f}", f"{row['macs_after'] / 1e6:.2f}")
    out.print(table)
    h, w = metrics["input_size"]
    out.print(f"at {h}x{w}: GMACs {metrics['macs_before'] / 1e9:.3f} -> {metrics['macs_after'] / 1e9:.3f}, params "
              f"{metrics['params_before']:,} -> {metrics['params_after']:,}"
              + ("; soft: the model keeps its shapes until pruned without --soft" if metrics["soft"] else ""))
    if "keeps" in metrics:
        from edgeseg.layout import PRUNE_SCAN_CSV, PRUNE_SCAN_PNG

        out.print("layer groups cut: " + ", ".join(f"{key} {keep:g}" for key, keep in metrics["keeps"].items())
                  + f"; predicted mIoU loss {100 * metrics['predicted_miou_loss']:.2f} points; the scan: "
                  f"{out_dir / PRUNE_SCAN_CSV}, {out_dir / PRUNE_SCAN_PNG}", markup=False, soft_wrap=True)
    if plot is not None:
        plot_model_dir(model, PruneStage(**{**settings, "stage": "prune"}).prune_config(), plot, metrics.get("keeps"))
        out.print(f"wrote {plot}")
    out.print(f"wrote {out_dir}")


@app.command("quantize")
@schema_options(QuantizeStage, flatten={"quantization": QuantizeConfig})
def quantize_command(
    model: Path = typer.Argument(..., help="a float model directory"),
    out_dir: Path = OutOption,
    data: Optional[str] = DataOption,
    train_config: Optional[Path] = typer.Option(
        None, "--train-config", help="fine-tune (quantization-aware) with this training config's data, "
                                     "augmentation, batch and loss: 5 epochs at lr 1e-5 unless train.epochs=N "
                                     "train.optimizer.lr=X say otherwise"),
    force: bool = ForceOption,
    settings: dict = None,
) -> None:
    """Quantize MODEL: fold BNs, calibrate activation ranges (post-training quantization) and,
    with train.KEY=VALUE settings or --train-config, fine-tune with quantization simulated;
    writes snapshot_log.txt."""
    from edgeseg.schema import load_yaml

    train_section = dict(load_yaml(train_config) or {}) if train_config else {}
    if train_config and "train" not in settings:  # a training config given means: fine-tune with it
        settings = {**settings, "train": {}}
    result = run_single_stage("quantize", model, settings, out_dir, data, "train", force, train_section,
                              needs_data=True)
    snapshot = out_dir / "snapshot_log.txt"
    if snapshot.is_file():
        out.print(snapshot.read_text(encoding="utf-8"), markup=False)
    best = result.metrics.get("best_val_miou")
    out.print(f"wrote {out_dir}" + (f" (fine-tuned: best val mIoU {100 * best:.2f} %)" if best is not None else ""))


@app.command("export")
@schema_options(ExportStage)
def export_command(
    model: Path = typer.Argument(..., help="model directory"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="default: MODEL.onnx or MODEL-bundle/"),
    data: Optional[str] = DataOption,
    split: str = SplitOption,
    force: bool = ForceOption,
    settings: dict = None,
) -> None:
    """Export MODEL to ONNX (fp32 or int8) or a deploy bundle; the export is run in ONNX Runtime
    and checked against MODEL on real images before anything is written."""
    if out_path is None:  # beside the model directory, named after it (resolved: MODEL may be '.')
        named = model.resolve()
        out_path = named.with_name(named.name + "-bundle") if settings.get("format") == "bundle" \
            else named.with_name(named.name + ".onnx")
    run_single_stage("export", model, settings, out_path, data, split, force, needs_data=True)
