"""Leave-one-group-out validation: a config trained once per held-out group (a CamVid
sequence, a user's video) and scored on that group, next to the ordinary val split, so that
the gap between remembering the val drive and generalising to unseen ones is visible."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.data.dataset import split_parts
from edgeseg.data.groups import pooled_groups
from edgeseg.data.spec import DatasetConfig, open_source, parse_spec
from edgeseg.errors import ConfigError
from edgeseg.layout import BEST_DIR, FOLD_PREFIX, FOLDS_SUFFIX, METRICS_CSV, ORDINARY_RUN, RUN_CONFIG
from edgeseg.schema import validate
from edgeseg.training.checkpoint import has_resumable_state
from edgeseg.training.config import TrainConfig, resume_config
from edgeseg.training.loop import read_metrics_csv, train


@dataclass(frozen=True)
class FoldRun:
    """One training: ``held_out`` is the group scored (None: the ordinary val split)."""

    held_out: str | None
    seed: int
    train_images: int
    val_images: int
    final_miou: float  # the last epoch's model: nothing was chosen on the scored images
    best_miou: float   # the best epoch, chosen on the scored images themselves (optimistic)
    run_dir: Path


@dataclass
class FoldsResult:
    """Every run; with several seeds a fold's mIoU is the mean over its seeds, and the mean
    and spread are taken over folds (drives), not over runs."""

    runs: list[FoldRun]
    rule: str = ""
    groups: list[str] = field(default_factory=list)

    def fold_miou(self, group: str | None) -> float:
        """The mean final mIoU of ``group``'s runs (None: the ordinary ones) over their seeds."""
        return statistics.fmean(r.final_miou for r in self.runs if r.held_out == group)

    @property
    def has_ordinary(self) -> bool:
        return any(r.held_out is None for r in self.runs)

    @property
    def fold_mious(self) -> list[float]:
        return [self.fold_miou(group) for group in self.groups]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.fold_mious)

    @property
    def std(self) -> float:
        """Sample standard deviation over the folds (NaN with one fold)."""
        return statistics.stdev(self.fold_mious) if len(self.groups) > 1 else math.nan

    def as_json(self) -> dict:
        def run(r: FoldRun) -> dict:
            return {"held_out": r.held_out, "seed": r.seed, "train_images": r.train_images,
                    "val_images": r.val_images, "final_miou": r.final_miou, "best_epoch_miou": r.best_miou,
                    "run_dir": str(r.run_dir)}
        values = self.fold_mious
        return {"group_rule": self.rule, "runs": [run(r) for r in self.runs],
                "fold_miou": dict(zip(self.groups, values)), "mean_miou": self.mean,
                "std_miou": None if math.isnan(self.std) else self.std, "min_miou": min(values),
                "max_miou": max(values), "ordinary_miou": self.fold_miou(None) if self.has_ordinary else None}


def dataset_config(config: TrainConfig) -> DatasetConfig:
    """The training config's dataset as a mapping (a spec string parsed)."""
    spec = config.data.spec
    return parse_spec(spec) if isinstance(spec, str) else spec


def folds_dir(config: TrainConfig) -> Path:
    """Where the fold runs of ``config`` live: ``<runs_dir>/<name>-folds/``."""
    return config.runs_dir / f"{config.name}{FOLDS_SUFFIX}"


def fold_config(config: TrainConfig, group: str | None, seed: int | None = None) -> TrainConfig:
    """``config`` with ``group`` held out as val (train = the rest of train+val; None: the
    ordinary splits), with ``seed`` when given, run as ``fold-<group>`` or ``ordinary`` (and
    ``-seed<N>``) in the folds folder."""
    data = config.model_dump(mode="json")
    name = ORDINARY_RUN if group is None else f"{FOLD_PREFIX}{group}"
    data["name"] = name if seed is None else f"{name}-seed{seed}"
    data["runs_dir"], data["seed"] = str(folds_dir(config)), config.seed if seed is None else seed
    if group is not None:
        data["data"]["spec"] = {**dataset_config(config).model_dump(mode="json"), "holdout_group": group}
        data["data"]["train_split"], data["data"]["val_split"] = "train", "val"
    else:  # a final-model config trains on train+val; its ordinary score must not count trained images
        val_parts = split_parts(config.data.val_split)
        kept = [part for part in split_parts(config.data.train_split) if part not in val_parts]
        if not kept:
            raise ConfigError(f"data.train_split '{config.data.train_split}': nothing is left to train the ordinary "
                              f"run on once the val split is taken out (or run with --no-ordinary)")
        data["data"]["train_split"] = "+".join(kept)
    return validate(TrainConfig, data, f"fold {group or ORDINARY_RUN}")


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


def run_folds(config: TrainConfig, groups: list[str] | None = None, ordinary: bool = True,
              seeds: list[int] | None = None, log=print) -> FoldsResult:
    """Train ``config`` once per held-out group (and once as it is, when ``ordinary``), once
    per seed of ``seeds`` (default: the config's own), and collect each run's mIoU on the
    images it held out. Each run is an ordinary run directory in ``folds_dir(config)``:
    ``fold-<group>/`` and ``ordinary/`` (with seeds: ``fold-<group>-seed<N>/``...).
    Resumable: a run finished before with the same config is read back, an interrupted one
    continued from its last epoch; one made with another config is a ConfigError."""
    rule, chosen = fold_groups(config, groups)
    result = FoldsResult([], rule=rule, groups=chosen)
    seeds = list(dict.fromkeys(seeds)) if seeds else None  # a seed given twice would count its run twice
    plan = [(group, seed) for group in [*chosen, *([None] if ordinary else [])] for seed in seeds or [None]]
    for group, seed in plan:
        run_config = fold_config(config, group, seed)
        what = (f"group '{group}'" if group else "the ordinary val split") + (f", seed {seed}" if seeds else "")
        source = open_source(run_config.data.spec)
        sizes = len(source.dataset(run_config.data.train_split, check_files=False)), \
            len(source.dataset(run_config.data.val_split, check_files=False))
        final, best, run_dir = _fold_run(run_config, what, log)
        result.runs.append(FoldRun(group, run_config.seed, sizes[0], sizes[1], final, best, run_dir))
    return result


def _fold_run(config: TrainConfig, what: str, log) -> tuple[float, float, Path]:
    """(last epoch's val mIoU, best val mIoU, run dir) of one fold, from its metrics.csv once
    trained, continued or found finished."""
    run_dir = config.runs_dir / config.name
    if not (run_dir / RUN_CONFIG).is_file():
        log(f"folds: training with {what} held out")
        run_dir = train(config, log=log).run_dir
    else:
        try:
            resumed = resume_config(run_dir, None, requested=config)
        except ConfigError as err:
            raise ConfigError(f"{err}; or give these folds another name (name=...)") from None
        if len(read_metrics_csv(run_dir / METRICS_CSV)) == config.epochs and (run_dir / BEST_DIR).is_dir():
            log(f"folds: {what}: trained before, read from {run_dir}")
        elif has_resumable_state(run_dir):
            log(f"folds: {what}: continuing {run_dir}")
            train(resumed, resume_dir=run_dir, log=log)
        else:
            raise ConfigError(f"{run_dir}: an unfinished fold run without a last/ state to continue; delete it")
    scores = [float(row["val_miou"]) for row in read_metrics_csv(run_dir / METRICS_CSV) if row["val_miou"]]
    return scores[-1], max(scores), run_dir
