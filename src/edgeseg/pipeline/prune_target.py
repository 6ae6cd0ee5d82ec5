"""The prune stage with a MACs or latency target: the sensitivity scan (cached beside the
pruned model, reused while the source model, data and scan settings stay the same), the
allocation, and the scan written as a table and a picture."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Callable

from edgeseg.compress.prune import plan_pruning, skipped_convs
from edgeseg.compress.prune_search import (Allocation, MacsEstimate, Sensitivity, allocate_latency, allocate_macs,
                                           pruned_copy, scan_sensitivity, scope_sizes)
from edgeseg.compress.sample_images import labelled_images
from edgeseg.compress.specs import PruneConfig
from edgeseg.errors import ConfigError
from edgeseg.export.onnx import onnx_latency_ms
from edgeseg.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, mark_png
from edgeseg.layout import PRUNE_SCAN_CSV, PRUNE_SCAN_JSON, PRUNE_SCAN_PNG, WEIGHTS_NAME
from edgeseg.models.model_dir import load_model_dir
from edgeseg.models.profile import profile_model
from edgeseg.models.stride import round_up
from edgeseg.plots import prune_sensitivity


def _fingerprint(source: Path, config: PruneConfig, data: str | dict, split: str) -> str:
    digest = hashlib.sha256((source / WEIGHTS_NAME).read_bytes())
    digest.update(json.dumps([config.criterion, sorted(config.skip), config.scan_ratios, config.scan_images, data,
                              split, config.channel_multiple]).encode())
    return digest.hexdigest()


def _cached_scan(out: Path, fingerprint: str) -> Sensitivity | None:
    try:
        saved = json.loads((out / PRUNE_SCAN_JSON).read_text(encoding="utf-8"))["scan"]
        return Sensitivity(**saved) if saved.get("fingerprint") == fingerprint else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def search_allocation(source: Path, config: PruneConfig, out: Path, data: str | dict | None, split: str,
                      log: Callable[[str], None]) -> tuple[Allocation, Sensitivity, dict]:
    """Scan (or reuse the scan in ``out``) and share out ``config``'s target; returns the
    allocation, the scan and the metrics the stage records about the search."""
    loaded = load_model_dir(source)
    data = data or loaded.config.trained_on()
    if data is None:
        raise ConfigError(f"{source}: a prune target needs val images for its scan, and no training dataset is "
                          f"recorded; pass --data SPEC")
    model, skip = loaded.model, skipped_convs(loaded.model, config.skip)
    fingerprint = _fingerprint(source, config, data, split)
    sensitivity = _cached_scan(out, fingerprint)
    if sensitivity is None:
        images = labelled_images(source, data, split, config.scan_images)
        sensitivity = scan_sensitivity(model, loaded.config, images, config.scan_ratios, config.criterion, skip, log,
                                       config.channel_multiple)
        sensitivity.fingerprint = fingerprint
    else:
        log(f"prune scan: reusing {out / PRUNE_SCAN_JSON} (same model, data and scan settings)")
    plan = plan_pruning(model, 1.0, config.criterion, skip)
    size = round_up(loaded.config.input_size, loaded.config.output_stride)
    estimate = MacsEstimate(plan, profile_model(model, size), config.channel_multiple)
    sizes = scope_sizes(plan)
    metrics = {"scan_images": sensitivity.images, "scan_base_miou": sensitivity.base_miou}
    if config.target_macs is not None:
        allocation = allocate_macs(estimate, sensitivity, sizes, config.target_macs)
    else:
        log(f"prune: searching for {config.target_latency_ms:g} ms (fp32 ONNX Runtime at {size[0]}x{size[1]})")
        allocation, latency = allocate_latency(
            estimate, sensitivity, sizes, config.target_latency_ms,
            lambda keeps: onnx_latency_ms(pruned_copy(model, config.criterion, skip, keeps, config.channel_multiple),
                                          size), log)
        metrics["measured_latency_ms"] = latency
    metrics.update(predicted_miou_loss=allocation.predicted_loss, estimated_macs_fraction=allocation.macs_fraction)
    log(f"prune: {len(allocation.keeps)} of {len(sizes)} layer groups cut, {allocation.macs_fraction:.3f} of the "
        f"MACs, predicted mIoU loss {100 * allocation.predicted_loss:.2f} points (sum of single-group losses)")
    return allocation, sensitivity, metrics


def write_scan(out: Path, sensitivity: Sensitivity, allocation: Allocation, sizes: dict[str, int]) -> list[Path]:
    """``sensitivity.json`` (the scan, reused by a rerun, and the allocation), ``.csv`` (one row
    per layer group) and ``.png`` beside the pruned model."""
    losses = {key: [100 * (sensitivity.base_miou - miou) for miou in values]
              for key, values in sensitivity.miou.items()}
    record = {"scan": sensitivity.as_dict(), "keeps": allocation.keeps, "macs_fraction": allocation.macs_fraction,
              "predicted_miou_loss": allocation.predicted_loss, "path": allocation.path}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["layer_group", "channels", "keep", *(f"loss_at_{r:g}" for r in sensitivity.ratios)])
    for key, values in losses.items():
        writer.writerow([key, sizes.get(key, ""), allocation.keeps.get(key, 1.0), *(f"{v:.3f}" for v in values)])
    picture = prune_sensitivity(sensitivity.ratios, losses, allocation.keeps,
                                f"mIoU loss (points) of cutting one layer group alone, {sensitivity.images} val "
                                f"images; chosen keep at the right")
    return [atomic_write_json(out / PRUNE_SCAN_JSON, record),
            atomic_write_text(out / PRUNE_SCAN_CSV, table.getvalue()),
            atomic_write_bytes(out / PRUNE_SCAN_PNG, mark_png(picture, "prune"))]
