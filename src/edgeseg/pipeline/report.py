"""What each stage did, measured: accuracy, size, work and speed of a model directory, and
the report that puts the stages side by side (report.md for people, report.json for tools)."""

from __future__ import annotations

import gzip
import platform
from pathlib import Path

import torch

from edgeseg import __version__
from edgeseg.benchmark import measure_side_by_side
from edgeseg.evaluation import evaluate
from edgeseg.fileio import atomic_write_bytes
from edgeseg.layout import BUNDLE_MODEL, WEIGHTS_NAME
from edgeseg.models.profile import profile_model
from edgeseg.models.stride import round_up
from edgeseg.plots import confusion
from edgeseg.predict.predictors import load_predictor


DEFAULT_MAX_CLASS_DROP = 0.05  # IoU, as a fraction
DELTA_KEYS = ("miou", "pixel_acc", "sparsity", "params", "macs", "effective_macs", "size_bytes", "gzip_bytes",
              "latency_ms")


def measure_model_dir(model_dir, dataset, size: tuple[int, int], device: torch.device,
                      artifact: str | None = None) -> dict:
    """Evaluate ``model_dir`` (or the exported ``artifact`` made from it: an ONNX file or a
    bundle, run in ONNX Runtime) on ``dataset`` at full resolution and measure it: params,
    MACs and effective MACs (zero weights skipped) at ``size`` padded to the output stride as
    the predictor runs it, conv-weight sparsity, and the size of the weights file (or ONNX
    file), raw and gzip-compressed. ``confusion`` is the evaluation's confusion matrix."""
    evaluation = evaluate(load_predictor(artifact or model_dir, device), dataset, num_workers=0)
    predictor = load_predictor(model_dir, torch.device("cpu"))
    stride = predictor.output_stride
    profile = profile_model(predictor.model, round_up(size, stride))
    if artifact is None:
        raw = (Path(model_dir) / WEIGHTS_NAME).read_bytes()
    else:
        raw = (Path(artifact) if Path(artifact).is_file() else Path(artifact) / BUNDLE_MODEL).read_bytes()
    return {
        "miou": evaluation["miou"], "pixel_acc": evaluation["pixel_acc"], "mean_acc": evaluation["mean_acc"],
        "per_class_iou": evaluation["per_class_iou"], "num_images": evaluation["num_images"],
        "confusion": evaluation["confusion"],
        "params": profile.params, "macs": profile.macs, "effective_macs": profile.effective_macs,
        "sparsity": profile.sparsity, "conv_weights": sum(layer.weights for layer in profile.layers),
        "zero_weights": sum(layer.zeros for layer in profile.layers),
        "size_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0)),
        "precision": predictor.config.quantization.short(artifact is not None)
                     if predictor.config.quantization else "fp32",
        "runtime": "onnxruntime" if artifact else "pytorch",
    }


def measure_latencies(model_dirs: dict[str, object], size: tuple[int, int], runs: int) -> dict[str, dict]:
    """CPU latency (batch 1) of every model at ``size``, all timed side by side in one go."""
    predictors = {name: load_predictor(path, torch.device("cpu")) for name, path in model_dirs.items()}
    return measure_side_by_side(predictors, size, runs=runs)


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "edgeseg": __version__}


def build_report(name: str, rows: list[dict], latencies: dict[str, dict], split: str, command: str,
                 max_class_drop: float = DEFAULT_MAX_CLASS_DROP) -> dict:
    """report.json: the stages in order, each with its measurements, its latency from the
    side-by-side timing, deltas against the stage before it and the first stage, and
    ``class_drops``: the classes whose IoU fell more than ``max_class_drop`` below the first
    stage's, largest first (a compression step that sacrifices one class for the mean)."""
    stages = []
    for row in rows:
        latency = latencies[row["dir"]]
        stages.append({"stage": row["dir"], "kind": row["kind"], "seconds": row.get("seconds"),
                       **row["measurements"], "latency_ms": latency["latency_ms"],
                       "latency_ms_p90": latency["latency_ms_p90"], "threads": latency["threads"]})
    for index, entry in enumerate(stages[1:], 1):
        for label, other in (("delta_prev", stages[index - 1]), ("delta_first", stages[0])):
            entry[label] = {key: entry[key] - other[key] for key in DELTA_KEYS}
        entry["class_drops"] = class_drops(stages[0]["per_class_iou"], entry["per_class_iou"], max_class_drop)
    return {"recipe": name, "split": split, "command": command, "machine": machine(),
            "latency_size": next(iter(latencies.values()))["size"], "max_class_drop": max_class_drop,
            "stages": stages}


def class_drops(first: dict[str, float | None], current: dict[str, float | None], limit: float) -> dict[str, float]:
    """Class -> IoU fall (first - current) for the classes that fell more than ``limit``,
    largest first; classes absent from the split (IoU None) are not judged."""
    drops = {name: first[name] - iou for name, iou in current.items()
             if iou is not None and first.get(name) is not None and first[name] - iou > limit}
    return dict(sorted(drops.items(), key=lambda item: -item[1]))


def class_drop_lines(report: dict) -> list[str]:
    """One line per stage after the first: the classes that fell too far, or that none did."""
    first, limit = report["stages"][0], 100 * report.get("max_class_drop", DEFAULT_MAX_CLASS_DROP)
    lines = []
    for s in report["stages"][1:]:
        drops = s.get("class_drops", {})
        if drops:
            shown = ", ".join(f"{name} {100 * first['per_class_iou'][name]:.1f} -> {100 * s['per_class_iou'][name]:.1f}"
                              for name in drops)
            lines.append(f"{s['stage']}: {len(drops)} class(es) fell more than {limit:.1f} points below "
                         f"{first['stage']}: {shown}")
        else:
            lines.append(f"{s['stage']}: no class fell more than {limit:.1f} points below {first['stage']}")
    return lines


def _signed(value: float, scale: float = 100, digits: int = 2) -> str:
    return f"{value * scale:+.{digits}f}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def stage_pictures(out: Path, rows: list[dict], split: str) -> dict[str, list[tuple[str, str]]]:
    """Per stage, (caption, path relative to ``out``) of the pictures report.md shows: the
    training curves of every run inside the stage's folder, and stages/<stage>/confusion.png,
    drawn here from the stage's measured confusion matrix (a run's own confusion.png where
    the stage was measured before matrices were recorded). Only files that exist are listed."""
    pictures = {}
    for row in rows:
        stage_dir = out / "stages" / row["dir"]
        found = [(f"training curves ({path.parent.relative_to(stage_dir).as_posix()})", path)
                 for path in sorted(stage_dir.rglob("curves.png"))]
        measured = row["measurements"]
        if measured.get("confusion") is not None:
            title = f"{row['dir']} on {split}: mIoU {100 * measured['miou']:.2f} %"
            target = atomic_write_bytes(stage_dir / "confusion.png",
                                        confusion(measured["confusion"], list(measured["per_class_iou"]), title))
            found.append((f"confusion on {split}", target))
        else:
            found += [(f"confusion ({path.parent.relative_to(stage_dir).as_posix()})", path)
                      for path in sorted(stage_dir.rglob("confusion.png"))]
        pictures[row["dir"]] = [(caption, path.relative_to(out).as_posix()) for caption, path in found]
    return pictures


def report_markdown(report: dict, pictures: dict[str, list[tuple[str, str]]] | None = None) -> str:
    """The report as Markdown: the stage table, per-class IoU per stage, then each stage's
    ``pictures`` (from ``stage_pictures``) as images linked relative to report.md."""
    host = report["machine"]
    lines = [f"# {report['recipe']}: stage report", "",
             f"Reproduce: `{report['command']}`", "",
             f"Measured on {host['processor']}, {host['platform']}, torch {host['torch']}, "
             f"{host['threads']} threads; mIoU on the {report['split']} split at full resolution; "
             f"latency: CPU, batch 1, {report['latency_size'][0]}x{report['latency_size'][1]}, median, every stage's "
             f"model timed side by side in one go.", "",
             "| stage | precision | mIoU % | vs prev | vs first | pixel acc % | params | GMACs | effective GMACs | "
             "sparsity % | size MB | gzip MB | latency ms | minutes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["stages"]:
        prev, first = s.get("delta_prev"), s.get("delta_first")
        lines.append(
            f"| {s['stage']} | {s.get('precision', 'fp32')} ({s.get('runtime', 'pytorch')}) | {100 * s['miou']:.2f} | "
            f"{_signed(prev['miou']) if prev else '-'} | "
            f"{_signed(first['miou']) if first else '-'} | {100 * s['pixel_acc']:.2f} | {s['params']:,} | "
            f"{s['macs'] / 1e9:.3f} | {s['effective_macs'] / 1e9:.3f} | {100 * s['sparsity']:.2f} | "
            f"{s['size_bytes'] / 1e6:.2f} | {s['gzip_bytes'] / 1e6:.2f} | {s['latency_ms']:.1f} | "
            f"{_minutes(s['seconds'])} |")
    classes = list(report["stages"][0]["per_class_iou"])
    lines += ["", "Per-class IoU %:", "",
              "| stage | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for s in report["stages"]:
        cells = ["-" if s["per_class_iou"][c] is None else f"{100 * s['per_class_iou'][c]:.1f}" for c in classes]
        lines.append(f"| {s['stage']} | " + " | ".join(cells) + " |")
    if len(report["stages"]) > 1:
        lines += ["", "Class check:", ""] + [f"- {line}" for line in class_drop_lines(report)]
    if any((pictures or {}).values()):
        lines += ["", "## Pictures"]
    for stage, shown in (pictures or {}).items():
        if shown:
            lines += ["", f"### {stage}"]
            for caption, path in shown:
                lines += ["", f"![{stage}: {caption}]({path})"]
    return "\n".join(lines) + "\n"
