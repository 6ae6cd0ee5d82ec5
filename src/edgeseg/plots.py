"""Pictures for people: training curves, confusion matrices and class shares, as PNG bytes.

matplotlib is imported on the first drawing, never by importing this module, so commands
that draw nothing do not pay for it; it draws on Figure objects with the Agg renderer and
no pyplot, so nothing global is touched and no window can open.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from edgeseg.data.doctor import DoctorReport

DPI = 110
SPLIT_COLOURS = ("#3b6ea5", "#e08a2c", "#4c9a5b", "#b04a5a", "#7d5ba6", "#8c6d46")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _number(value) -> float | None:
    """A metrics.csv cell (text, number or empty) as a float, or None when empty."""
    if value is None or value == "":
        return None
    return float(value)


def curves(rows: list[dict], title: str = "") -> bytes:
    """A PNG of three panels over the epochs: mean train loss, learning rate (at each epoch's
    last step) and val mIoU % at the epochs that were evaluated, the best one marked.

    ``rows`` are metrics.csv rows (text cells as read back, or the loop's own dicts);
    rows without a value simply leave that point out, so an empty list gives empty axes.
    """
    epochs = [int(_number(row["epoch"])) for row in rows]
    loss = [_number(row.get("train_loss")) for row in rows]
    lr = [_number(row.get("lr")) for row in rows]
    evaluated = [(e, 100 * v) for e, v in zip(epochs, (_number(row.get("val_miou")) for row in rows)) if v is not None]
    figure = _figure(12, 3.6)
    axes = figure.subplots(1, 3)
    marker = "o" if len(rows) <= 30 else None
    panels = ((axes[0], [(e, v) for e, v in zip(epochs, loss) if v is not None], "train loss", "#3b6ea5"),
              (axes[1], [(e, v) for e, v in zip(epochs, lr) if v is not None], "learning rate", "#e08a2c"),
              (axes[2], evaluated, "val mIoU %", "#4c9a5b"))
    for ax, points, name, colour in panels:
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, color=colour, marker=marker, markersize=3.5, linewidth=1.6)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if evaluated:
        best_epoch, best = max(evaluated, key=lambda point: point[1])
        axes[2].plot([best_epoch], [best], marker="*", markersize=12, color="#b04a5a", linestyle="none")
        right_half = len(evaluated) > 1 and best_epoch > (evaluated[0][0] + evaluated[-1][0]) / 2
        axes[2].annotate(f"best {best:.2f} (epoch {best_epoch})", (best_epoch, best), textcoords="offset points",
                         xytext=(-6 if right_half else 6, -16), ha="right" if right_half else "left", fontsize=9,
                         color="#b04a5a")
        low, high = min(v for _, v in evaluated), max(v for _, v in evaluated)
        pad = max(1.0, 0.15 * (high - low))
        axes[2].set_ylim(max(0.0, low - 2 * pad), min(100.0, high + pad))
    if title:
        figure.suptitle(title)
    return _png(figure)


def confusion(matrix, class_names: list[str] | tuple[str, ...], title: str = "") -> bytes:
    """A PNG of the confusion matrix, rows (ground truth) normalised to 100 %, every cell of
    at least 0.5 % written out; each row is labelled with its class name and its share of
    the valid pixels. ``matrix[t][p]`` counts pixels of true class t predicted as p over
    valid pixels only, so the void (ignore) class never appears. Classes absent from the
    ground truth are marked as such and their row left blank."""
    counts = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} class names")
    row_totals = counts.sum(axis=1)
    total = row_totals.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(row_totals[:, None] > 0, 100 * counts / row_totals[:, None], np.nan)
    side = min(max(4.5, 0.55 * n + 2.8), 24)
    figure = _figure(side + 0.8, side - 0.5)
    ax = figure.subplots()
    image = ax.imshow(np.nan_to_num(percent), cmap="Blues", vmin=0, vmax=100, aspect="equal")
    font = 9 if n <= 12 else 7 if n <= 24 else 5
    if n <= 40:
        for t in range(n):
            for p in range(n):
                value = percent[t, p]
                if not math.isnan(value) and value >= 0.5:
                    ax.text(p, t, f"{value:.0f}", ha="center", va="center", fontsize=font,
                            color="white" if value > 55 else "#1a1a1a")
    rows = [f"{name} ({100 * share:.1f} %)" if share > 0 else f"{name} (absent)"
            for name, share in zip(class_names, row_totals / max(total, 1))]
    ax.set_xticks(range(n), list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), rows)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground truth (share of valid pixels)")
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="% of the ground-truth row")
    diagonal = np.trace(counts) / total if total else math.nan
    ax.set_title((f"{title}\n" if title else "") + f"pixel accuracy {100 * diagonal:.2f} %, "
                 f"{int(total):,} valid pixels", fontsize=10)
    return _png(figure)


def class_shares(report: DoctorReport, title: str = "") -> bytes:
    """A PNG of the label doctor's class shares: one horizontal bar per class and split, in
    % of all the split's pixels (as ``data check`` prints them), the ignored class last."""
    names = [*report.class_names, f"{report.ignore_name} (ignored)"]
    ids = [*range(len(report.class_names)), report.ignore_index]
    splits = report.splits
    shares = []
    for split in splits:
        total = int(split.class_pixels.sum())
        shares.append([100 * int(split.class_pixels[i]) / total if total else 0.0 for i in ids])
    height = 0.28 * len(names) * max(1, len(splits)) + 1.6
    figure = _figure(8.5, min(max(height, 3.5), 40))
    ax = figure.subplots()
    bar = 0.8 / max(1, len(splits))
    top = max((max(s) for s in shares), default=0.0)
    for index, (split, values) in enumerate(zip(splits, shares)):
        y = np.arange(len(names)) + (index - (len(splits) - 1) / 2) * bar
        ax.barh(y, values, height=bar, color=SPLIT_COLOURS[index % len(SPLIT_COLOURS)],
                label=f"{split.split} ({split.num_images} images)")
        for yy, value in zip(y, values):
            ax.text(value + top * 0.01, yy, f"{value:.2f}" if value < 10 else f"{value:.1f}", va="center",
                    fontsize=7 if len(splits) > 2 else 8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.15 + 1e-9)
    ax.set_xlabel("% of the split's pixels")
    ax.grid(True, axis="x", alpha=0.3)
    if splits:
        ax.legend(loc="lower right", fontsize=9)
    ax.set_title(title or f"class shares: {report.spec}")
    return _png(figure)



def filter_cutoffs(importance: dict[str, tuple[list[float], list[bool]]], title: str = "",
                   columns: int = 6) -> bytes:
    """A PNG of small multiples, one panel per layer of ``importance`` (name -> (filter
    importances, kept flags)): the filters sorted kept first, each group largest first, kept
    dark and removed light, a line at the cut-off, and "kept/total" in the panel's title (the
    seed's interactive pruning window, as a picture). Where another layer decided a layer's
    channels (an add group follows its shortcut) its kept filters need not be its largest."""
    names = list(importance)
    rows = max(1, math.ceil(len(names) / columns))
    figure = _figure(2.6 * columns, 1.9 * rows + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        scores, kept = importance[name]
        order = sorted(range(len(scores)), key=lambda i: (not kept[i], -scores[i]))
        ax.bar(range(len(order)), [scores[i] for i in order], width=1.0,
               color=["#1f4e79" if kept[i] else "#f4a582" for i in order])
        ax.axvline(sum(kept) - 0.5, color="#b2182b", linewidth=1)
        ax.set_title(f"{name}\n{sum(kept)}/{len(kept)} kept", fontsize=7)
        ax.tick_params(labelsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    return _png(figure)

def prune_sensitivity(ratios: list[float], losses: dict[str, list[float]], chosen: dict[str, float],
                      title: str = "") -> bytes:
    """A PNG of the prune scan: one row per layer group (forward order), one column per scanned
    keep ratio, each cell the mIoU loss in points of cutting that group alone (darker: worse),
    and the keep the allocation chose written at the right."""
    names = list(losses)
    figure = _figure(2.2 + 0.9 * len(ratios) + 1.2, 0.8 + 0.19 * max(1, len(names)))
    ax = figure.subplots()
    table = np.array([losses[name] for name in names]) if names else np.zeros((0, len(ratios)))
    top = max(1e-6, float(table.max()) if table.size else 1.0)
    ax.imshow(np.clip(table, 0, None), aspect="auto", cmap="Reds", vmin=0, vmax=top)
    for row, name in enumerate(names):
        for column, value in enumerate(losses[name]):
            ax.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=6,
                    color="white" if value > 0.6 * top else "black")
        ax.text(len(ratios) - 0.35, row, f"keep {chosen.get(name, 1.0):g}", va="center", fontsize=6)
    ax.set_xticks(range(len(ratios)), [f"keep {r:g}" for r in ratios], fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlim(-0.5, len(ratios) + 0.6)
    ax.set_title(title or "mIoU loss (points) of cutting one layer group alone", fontsize=8)
    return _png(figure)


def write_run_pictures(run_dir: Path, rows: list[dict], metrics: dict | None,
                       class_names: list[str] | tuple[str, ...], what: str = "") -> list[Path]:
    """Write ``run_dir/curves.png`` from the metrics rows and, when ``metrics`` carries a
    ``confusion`` matrix, ``run_dir/confusion.png``; both atomically. Returns what was written."""
    run_dir = Path(run_dir)
    written = [atomic_write_bytes(run_dir / "curves.png", curves(rows, run_dir.name))]
    if metrics is not None and metrics.get("confusion") is not None:
        title = f"{run_dir.name}: {what}" if what else run_dir.name
        written.append(atomic_write_bytes(run_dir / "confusion.png", confusion(metrics["confusion"], class_names,
                                                                               title)))
    return written
