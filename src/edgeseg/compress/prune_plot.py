"""The picture that replaces the seed's interactive window: per pruned layer, its filter
importances sorted largest first, kept ones dark and removed ones light, and the cut-off
where the kept ones end (for a layer whose channels another layer decided, as in an add
group, the kept filters need not be its largest)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from edgeseg.compress.prune import plan_pruning, skipped_convs
from edgeseg.compress.specs import PruneConfig
from edgeseg.fileio import atomic_write_bytes
from edgeseg.models.model_dir import load_model_dir


def plot_importance(importance: dict[str, tuple[list[float], list[bool]]], path: str | Path, title: str,
                    columns: int = 6) -> Path:
    """Write a PNG of small multiples, one panel per layer in ``importance`` (name -> (filter
    importances, kept flags)), atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(importance)
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        scores, kept = importance[name]
        order = sorted(range(len(scores)), key=lambda i: (not kept[i], -scores[i]))
        values = [scores[i] for i in order]
        colours = ["#1f4e79" if kept[i] else "#f4a582" for i in order]
        ax.bar(range(len(values)), values, width=1.0, color=colours)
        ax.axvline(sum(kept) - 0.5, color="#b2182b", linewidth=1)
        ax.set_title(f"{name}\n{sum(kept)}/{len(kept)} kept", fontsize=7)
        ax.tick_params(labelsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def plot_model_dir(source: str | Path, config: PruneConfig, path: str | Path) -> Path:
    """The plot for pruning the model directory ``source`` with ``config`` (the same choice the
    prune stage makes: planning is deterministic)."""
    model = load_model_dir(source).model
    plan = plan_pruning(model, config.keep, config.criterion, skipped_convs(model, config.skip))
    return plot_importance(plan.importance, path, f"{source}: keep {config.keep} ({config.criterion}); dark: kept")
