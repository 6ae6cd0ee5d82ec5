"""Leave-one-group-out validation: a config trained once per held-out group (a CamVid
sequence, a user's video) and scored on that group, next to the ordinary val split, so that
the gap between remembering the val drive and generalising to unseen ones is visible."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.data.groups import pooled_groups
from edgeseg.data.spec import DatasetConfig, open_source, parse_spec
from edgeseg.errors import ConfigError
from edgeseg.schema import validate
from edgeseg.training.config import TrainConfig
from edgeseg.training.loop import train


@dataclass(frozen=True)
class FoldRun:
    """One training: ``held_out`` is the group scored (None: the ordinary val split)."""

    held_out: str | None
    train_images: int
    val_images: int
    final_miou: float  # the last epoch's model: nothing was chosen on the scored images
    best_miou: float   # the best epoch, chosen on the scored images themselves (optimistic)
    run_dir: Path


@dataclass
class FoldsResult:
    folds: list[FoldRun]
    ordinary: FoldRun | None = None
    rule: str = ""
    groups: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(f.final_miou for f in self.folds)

    @property
    def std(self) -> float:
        """Sample standard deviation over the folds (NaN with one fold)."""
        return statistics.stdev(f.final_miou for f in self.folds) if len(self.folds) > 1 else math.nan

    def as_json(self) -> dict:
        def run(f: FoldRun) -> dict:
            return {"held_out": f.held_out, "train_images": f.train_images, "val_images": f.val_images,
                    "final_miou": f.final_miou, "best_epoch_miou": f.best_miou, "run_dir": str(f.run_dir)}
        values = [f.final_miou for f in self.folds]
        return {"group_rule": self.rule, "folds": [run(f) for f in self.folds],
                "mean_miou": self.mean, "std_miou": None if math.isnan(self.std) else self.std,
                "min_miou": min(values), "max_miou": max(values),
                "ordinary": run(self.ordinary) if self.ordinary else None}


def dataset_config(config: TrainConfig) -> DatasetConfig:
    """The training config's dataset as a mapping (a spec string parsed)."""
    spec = config.data.spec
    return parse_spec(spec) if isinstance(spec, str) else spec


def fold_config(config: TrainConfig, group: str) -> TrainConfig:
    """``config`` with ``group`` held out as val (train = the rest of train+val), run under its own name."""
    data = config.model_dump(mode="json")
    data["name"] = f"{config.name}-fold-{group}"
    data["data"]["spec"] = {**dataset_config(config).model_dump(mode="json"), "holdout_group": group}
    data["data"]["train_split"], data["data"]["val_split"] = "train", "val"
    return validate(TrainConfig, data, f"fold {group}")


def fold_groups(config: TrainConfig, groups: list[str] | None) -> tuple[str, list[str]]:
    """(group rule, the groups to hold out): ``groups``, or every group of train+val."""
    dataset = dataset_config(config)
    if dataset.holdout_group is not None:
        raise ConfigError("data.spec.holdout_group: folds hold out each group in turn; leave it unset")
    source = open_source(dataset)
    if not hasattr(source, "splits"):
        raise ConfigError(f"data.spec: a {dataset.format} dataset has no file names to group into folds")
    rule = getattr(source, "group_rule", None)
    if rule is None:
        raise ConfigError(f"data.spec: {source.spec} has no groups; give the dataset a group_by regex "
                          f"(e.g. data.spec.group_by='^([^_]+)_')")
    present = pooled_groups(source.splits, rule, source.spec)
    unknown = [g for g in groups or [] if g not in present]
    if unknown:
        raise ConfigError(f"--groups: '{unknown[0]}' is not a group of train+val ({', '.join(present)})")
    chosen = list(groups) if groups else present
    if len(chosen) < 2 and not groups:
        raise ConfigError(f"data.spec: train+val has only the group {', '.join(present)}; folds need two or more")
    return rule, chosen


def run_folds(config: TrainConfig, groups: list[str] | None = None, ordinary: bool = True, log=print) -> FoldsResult:
    """Train ``config`` once per held-out group (and once as it is, when ``ordinary``) and
    collect each run's mIoU on the images it held out. Each run is an ordinary run directory
    under ``runs_dir``, named ``<name>-fold-<group>``."""
    rule, chosen = fold_groups(config, groups)
    result = FoldsResult([], rule=rule, groups=chosen)
    plan = [(group, fold_config(config, group)) for group in chosen]
    if ordinary:
        plan.append((None, config))
    for group, run_config in plan:
        log(f"folds: training with {'group ' + repr(group) if group else 'the ordinary val split'} held out")
        source = open_source(run_config.data.spec)
        sizes = len(source.dataset(run_config.data.train_split, check_files=False)), \
            len(source.dataset(run_config.data.val_split, check_files=False))
        run = train(run_config, log=log)
        final = run.last_metrics["miou"] if run.last_metrics else math.nan
        fold = FoldRun(group, sizes[0], sizes[1], final, run.best_miou, run.run_dir)
        if group is None:
            result.ordinary = fold
        else:
            result.folds.append(fold)
    return result
