"""Rendering of reports for people (rich tables) and machines (JSON)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from edgeseg.data.doctor import DoctorReport, class_weights


def _share(pixels, total) -> str:
    return f"{100.0 * pixels / total:.2f}" if total else "-"


def print_doctor(report: DoctorReport, console: Console, show: int = 20) -> None:
    """Class-share table per split, suggested weights (first split), then problems."""
    names = list(report.class_names)
    counts = ", ".join(f"{s.split} {s.num_images}" for s in report.splits)
    table = Table(title=f"label doctor: {report.spec}", caption=f"images: {counts}; shares in % of all pixels")
    table.add_column("id", justify="right")
    table.add_column("class")
    for split in report.splits:
        table.add_column(f"{split.split} %", justify="right")
    weight_split = next((s for s in report.splits if s.split == "train"), report.splits[0] if report.splits else None)
    weights = class_weights(weight_split, len(names)) if weight_split else None
    if weights:
        table.add_column("w median-freq", justify="right")
        table.add_column("w enet", justify="right")
    totals = [int(s.class_pixels.sum()) for s in report.splits]
    for index, name in enumerate(names):
        row = [str(index), name] + [_share(s.class_pixels[index], t) for s, t in zip(report.splits, totals)]
        if weights:
            row += [_fmt(weights["median_frequency"][index]), _fmt(weights["enet"][index])]
        table.add_row(*row)
    table.add_section()
    ignore_row = [str(report.ignore_index), f"{report.ignore_name} (ignored)"]
    ignore_row += [_share(s.class_pixels[report.ignore_index], t) for s, t in zip(report.splits, totals)]
    table.add_row(*ignore_row, *([""] * 2 if weights else []))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    if report.groups is not None:
        console.print(f"groups: {report.groups.sentence()}", markup=False, soft_wrap=True)
    for split in report.splits:
        for warning in split.warnings:
            console.print(f"warning: {warning}", markup=False, soft_wrap=True)
        for problem in split.problems[:show]:
            console.print(f"problem [{split.split}]: {problem}", markup=False, soft_wrap=True)
        if len(split.problems) > show:
            console.print(f"problem [{split.split}]: ... and {len(split.problems) - show} more")
    count = sum(len(s.problems) for s in report.splits)
    console.print("clean: no problems found" if report.clean else f"{count} problem(s) found")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def doctor_json(report: DoctorReport) -> dict:
    names = list(report.class_names)
    splits = {}
    for split in report.splits:
        total = int(split.class_pixels.sum())
        splits[split.split] = {
            "num_images": split.num_images,
            "class_share": {n: (split.class_pixels[i] / total if total else None) for i, n in enumerate(names)},
            "ignore_share": split.class_pixels[report.ignore_index] / total if total else None,
            "class_pixels": {n: int(split.class_pixels[i]) for i, n in enumerate(names)},
            "class_weights": class_weights(split, len(names)),
            "problems": split.problems,
            "warnings": split.warnings,
        }
    groups = None if report.groups is None else {
        "rule": report.groups.rule, "val_images": report.groups.val_images,
        "val_images_sharing_a_group_with_train": report.groups.shared_images,
        "shared_groups": {g: {"train": t, "val": v} for g, (t, v) in report.groups.shared_groups.items()}}
    return {"spec": report.spec, "clean": report.clean, "classes": names, "notes": report.notes,
            "groups": groups, "splits": splits}


def print_profile(profile, config, console: Console) -> None:
    """One row per conv layer, then totals."""
    h, w = profile.input_size
    table = Table(title=f"{config.architecture} {config.arguments or ''} at {h}x{w}, {config.num_classes} classes")
    for column in ("layer", "kind", "in>out", "k/s/d/g", "out size", "params", "MMACs", "sparsity %"):
        table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
    for layer in profile.layers:
        table.add_row(layer.name, layer.kind, f"{layer.in_channels}>{layer.out_channels}",
                      f"{layer.kernel[0]}/{layer.stride[0]}/{layer.dilation[0]}/{layer.groups}",
                      f"{layer.output_size[0]}x{layer.output_size[1]}", f"{layer.params:,}",
                      f"{layer.macs / 1e6:.1f}", f"{100 * layer.sparsity:.1f}" if layer.weights else "-")
    console.print(table)
    console.print(f"params {profile.params:,} ({profile.params * 4 / 2**20:.2f} MiB fp32); "
                  f"GMACs {profile.macs / 1e9:.3f} (skipping zero weights: {profile.effective_macs / 1e9:.3f}); "
                  f"conv weight sparsity {100 * profile.sparsity:.1f} %; history: "
                  f"{', '.join(h.stage for h in config.history) or 'none'}", soft_wrap=True)
    if config.widths:
        console.print(f"pruned widths (config.json 'widths', conv -> output channels): "
                      + ", ".join(f"{name} {width}" for name, width in config.widths.items()), soft_wrap=True)


def print_onnx_profile(profile, console: Console) -> None:
    """An ONNX file's convs (as ``print_profile``), operator counts and metadata."""
    table = Table(title=f"{profile.path}: opset {profile.opset}, input {profile.input_shape}, {profile.nodes} nodes")
    for column in ("conv", "in>out", "k/s/d/g", "out size", "params", "MMACs", "sparsity %"):
        table.add_column(column, justify="left" if column == "conv" else "right")
    for conv in profile.convs:
        size = f"{conv.output_size[0]}x{conv.output_size[1]}" if conv.output_size else "?"
        table.add_row(conv.name, f"{conv.in_channels}>{conv.out_channels}",
                      f"{conv.kernel[0]}/{conv.stride}/{conv.dilation}/{conv.groups}", size, f"{conv.params:,}",
                      f"{conv.macs / 1e6:.1f}", f"{100 * conv.zeros / max(conv.params, 1):.1f}")
    console.print(table)
    params, zeros = sum(c.params for c in profile.convs), sum(c.zeros for c in profile.convs)
    console.print(f"conv params {params:,}; GMACs {sum(c.macs for c in profile.convs) / 1e9:.3f}; conv weight "
                  f"sparsity {100 * zeros / max(params, 1):.1f} %", soft_wrap=True)
    console.print("operators: " + ", ".join(f"{op} {n}" for op, n in profile.op_counts.items()), soft_wrap=True)
    shown = {k: v for k, v in profile.metadata.items() if k != "edgeseg_config"}
    for key, value in shown.items():
        console.print(f"{key}: {value if len(value) < 200 else value[:197] + '...'}", soft_wrap=True)


def print_folds(result, title: str, console: Console) -> None:
    """One row per fold run, then (with several seeds) each fold's mean, the mean and spread
    over folds, the ordinary val mIoU and its gap to the fold mean."""
    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{100 * value:.2f}"

    table = Table(title=title, caption="mIoU: the last epoch's model; best-epoch: chosen on the scored images")
    for column in ("held out", "seed", "train images", "val images", "mIoU %", "best-epoch mIoU %", "run"):
        table.add_column(column, justify="left" if column in ("held out", "run") else "right")
    for run in result.runs:
        table.add_row(run.held_out or "(ordinary val)", str(run.seed), str(run.train_images), str(run.val_images),
                      pct(run.final_miou), pct(run.best_miou), str(run.run_dir))
    table.add_section()
    if len(result.runs) > len(result.groups) + result.has_ordinary:
        for group, value in zip(result.groups, result.fold_mious):
            table.add_row(f"{group}: mean over seeds", "", "", "", pct(value), "", "")
    values = result.fold_mious
    table.add_row("mean over folds", "", "", "", pct(result.mean), "", "")
    table.add_row("spread over folds", "", "", "", f"sd {pct(result.std)}, {pct(min(values))}-{pct(max(values))}",
                  "", "")
    if result.has_ordinary:
        ordinary = result.fold_miou(None)
        table.add_row("ordinary val", "", "", "", pct(ordinary), "", "")
        table.add_row("gap (ordinary - fold mean)", "", "", "", pct(ordinary - result.mean), "", "")
    console.print(table)
