"""An evaluator that follows a training run (the seed's ``eval.py --train_dir --eval_dir``):
every periodic checkpoint (``save_every``) the run keeps in ``checkpoints/`` is evaluated
once, its metrics logged to an evaluation folder of its own (TensorBoard events and
``evaluations.csv``), while the run trains.

The run signals its end by writing ``finished.json`` (finished or diverged); the watcher
then evaluates what is left and stops. A run killed outright writes nothing: ``timeout``
bounds the wait.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeseg.data.spec import open_dataset
from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.evaluation import evaluate
from edgeseg.fileio import atomic_write_csv, check_output, mark_output, read_csv_rows
from edgeseg.layout import CHECKPOINT_PREFIX, CHECKPOINTS_DIR, EVAL_CSV, EVAL_DIR, RUN_CONFIG, RUN_END, TRAIN_STATE
from edgeseg.predict.predictors import TorchPredictor, with_pad_to_shape
from edgeseg.training.config import load_train_config
from edgeseg.training.tblog import TensorBoardLog

EVAL_FIELDS = ["checkpoint", "epoch", "step", "miou", "pixel_acc", "mean_acc"]


@dataclass
class WatchResult:
    eval_dir: Path
    evaluated: list[str]  # checkpoint names this call evaluated, in order
    ended_by: str  # "run finished", "run diverged", "all evaluated" or "timeout"


def kept_checkpoints(run_dir: Path) -> list[Path]:
    """The complete periodic checkpoints of ``run_dir``, oldest first (folders still being
    written have a temporary name and are not listed)."""
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                  and p.name[len(CHECKPOINT_PREFIX):].isdigit())


def watch_run(run_dir: Path, *, follow: bool, eval_dir: Path | None = None, data: str | None = None,
              split: str | None = None, device: torch.device = torch.device("cpu"), batch_size: int = 1,
              pad_to_shape: tuple[int, int] | None = None, timeout: float | None = None, poll: float = 2.0,
              force: bool = False, log=print) -> WatchResult:
    """Evaluate ``run_dir``'s kept checkpoints, each once; with ``follow`` also those that
    appear until the run writes its end marker (or ``timeout`` seconds pass). Checkpoints
    already listed in the evaluation folder's CSV (an earlier watcher) are not evaluated again.
    Data and split default to the run's own (``data.spec``, ``data.val_split``)."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {RUN_CONFIG})")
    config = load_train_config(run_dir / RUN_CONFIG)
    if follow and not config.save_every:
        raise ConfigError(f"{run_dir}: the run keeps no periodic checkpoints to follow (train with save_every=N)")
    eval_dir = Path(eval_dir) if eval_dir is not None else run_dir / EVAL_DIR
    check_output(eval_dir, "eval", force=force, kind="dir", flag="--eval-dir")
    eval_dir.mkdir(parents=True, exist_ok=True)
    mark_output(eval_dir, "eval", [EVAL_CSV])
    dataset = open_dataset(data if data is not None else config.data.spec, split or config.data.val_split)
    rows = read_csv_rows(eval_dir / EVAL_CSV)
    done = {row["checkpoint"] for row in rows}
    if done:
        log(f"{eval_dir}: {len(done)} checkpoints already evaluated there")
    tb = TensorBoardLog(eval_dir, True)
    evaluated, started = [], time.monotonic()
    try:
        while True:
            end = _run_end(run_dir)  # read before listing: checkpoints come before the marker
            for path in kept_checkpoints(run_dir):
                if path.name in done:
                    continue
                done.add(path.name)
                row = _evaluate_checkpoint(path, dataset, device, batch_size, pad_to_shape, tb, log)
                if row is not None:
                    rows.append(row)
                    evaluated.append(path.name)
                    atomic_write_csv(eval_dir / EVAL_CSV, rows, EVAL_FIELDS)
            if not follow:
                return WatchResult(eval_dir, evaluated, "all evaluated")
            if end is not None:
                return WatchResult(eval_dir, evaluated, f"run {end}")
            if timeout is not None and time.monotonic() - started > timeout:
                log(f"{run_dir}: no end of the run after {timeout:g} s; stopped watching")
                return WatchResult(eval_dir, evaluated, "timeout")
            time.sleep(poll)
    finally:
        tb.close()


def _evaluate_checkpoint(path: Path, dataset, device, batch_size, pad_to_shape, tb: TensorBoardLog, log) -> dict | None:
    try:
        progress = json.loads((path / TRAIN_STATE).read_text())["progress"]
        predictor = TorchPredictor.from_dir(path, device)
    except (FileNotFoundError, EdgesegError):
        if (path / TRAIN_STATE).is_file():
            raise
        log(f"{path.name}: removed before it could be evaluated (raise keep_last to keep it longer)")
        return None
    with_pad_to_shape(predictor, pad_to_shape)
    metrics = evaluate(predictor, dataset, batch_size=batch_size, num_workers=0)
    tb.evaluation(progress["step"], metrics)
    log(f"{path.name}: val mIoU {metrics['miou']:.4f}  pixel acc {metrics['pixel_acc']:.4f}")
    return {"checkpoint": path.name, "epoch": progress["epoch"], "step": progress["step"],
            "miou": f"{metrics['miou']:.5f}", "pixel_acc": f"{metrics['pixel_acc']:.5f}",
            "mean_acc": f"{metrics['mean_acc']:.5f}"}


def _run_end(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / RUN_END).read_text())["status"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return "ended"


