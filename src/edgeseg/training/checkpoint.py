"""Resumable training state without pickles: tensors in safetensors, the rest in JSON.

``last/`` holds ``model.safetensors``, ``average.safetensors`` (with a weight average),
``optimizer.safetensors`` (every tensor of the optimizer state, keyed ``<param index>.<name>``)
and ``state.json`` (epoch, step, best mIoU, optimizer hyper-parameters and scalar state).
Random state needs no file: the loop reseeds from (seed, epoch, rank) at every epoch. The
folder is replaced atomically; a run killed inside that replacement is repaired by
``recover_run_dir`` at the next start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.fileio import atomic_replace_dir, atomic_write_json
from edgeseg.layout import (BEST_DIR, CHECKPOINT_PREFIX, CHECKPOINTS_DIR, LAST_DIR, METRICS_CSV, RUN_CONFIG, RUN_END,
                            TRAIN_STATE)
from edgeseg.models import ModelConfig, save_model_dir


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors and JSON-able data."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], data: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *data["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": data["param_groups"]})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        progress: dict, average: torch.nn.Module | None = None) -> Path:
    """Write ``last/`` atomically; ``progress`` is JSON-able (epoch, step, best_miou, ...);
    ``average`` (the weight average's model) goes to ``average.safetensors``."""
    weights = _weights(model)
    averaged = _weights(average) if average is not None else None
    opt_tensors, opt_data = optimizer_to_files(optimizer)

    def build(tmp: Path) -> None:
        save_file(weights, str(tmp / "model.safetensors"))
        if averaged is not None:
            save_file(averaged, str(tmp / "average.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / TRAIN_STATE).write_text(json.dumps({"progress": progress, "optimizer": opt_data}, indent=1))

    return atomic_replace_dir(build, path)


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        average: torch.nn.Module | None = None) -> dict:
    """Restore model, optimizer (and the weight average) from ``last/``; returns the saved progress."""
    try:
        data = json.loads((path / TRAIN_STATE).read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        if average is not None:
            average.load_state_dict(load_file(str(path / "average.safetensors")), strict=True)
        device = next(model.parameters()).device
        opt_tensors = {k: v.to(device) if not k.endswith(".step") else v
                       for k, v in load_file(str(path / "optimizer.safetensors")).items()}
        optimizer_from_files(optimizer, opt_tensors, data["optimizer"])
    except FileNotFoundError as err:
        raise EdgesegError(f"{path}: cannot resume, {Path(err.filename).name} is missing") from None
    except (ValueError, RuntimeError, KeyError) as err:
        raise EdgesegError(f"{path}: cannot resume, the checkpoint does not fit this config ({str(err).splitlines()[0]})") from None
    return data["progress"]


STATE_DIRS = (LAST_DIR, BEST_DIR)
RUN_FILES = (LAST_DIR, BEST_DIR, METRICS_CSV, RUN_CONFIG)


def recover_run_dir(run_dir: Path) -> list[str]:
    """Repair what a kill inside an atomic write leaves in ``run_dir``: temporary folders and
    files (``.last.*.tmp``, ...) are removed; ``last.old`` (``best.old``) becomes ``last``
    (``best``) again when the kill came between the two renames, and is removed when the new
    one is complete. Returns what was done, one line each."""
    done = []
    for name in RUN_FILES:
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            done.append(f"removed {tmp.name}, left by a run stopped while writing it")
    for name in STATE_DIRS:
        current, old = run_dir / name, run_dir / f"{name}.old"
        if not old.is_dir():
            continue
        if current.is_dir():
            shutil.rmtree(old)
        else:
            os.replace(old, current)
            done.append(f"restored {name}/ from {name}.old/ (the run stopped while replacing it)")
    return done


def has_resumable_state(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a ``last/`` state (or the ``last.old/`` a kill left)."""
    return any((run_dir / name / TRAIN_STATE).is_file() for name in (LAST_DIR, LAST_DIR + ".old"))


def saved_progress(run_dir: Path) -> dict:
    """The progress (epoch, step, best_miou, ...) recorded in ``last/`` (or ``last.old/``)."""
    for name in (LAST_DIR, LAST_DIR + ".old"):
        try:
            return json.loads((run_dir / name / TRAIN_STATE).read_text())["progress"]
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{run_dir / name / 'state.json'}: unreadable checkpoint state") from None
    raise ConfigError(f"{run_dir}: nothing to resume (no last/state.json)")


def save_periodic_checkpoint(run_dir: Path, model: torch.nn.Module, config: ModelConfig, progress: dict,
                             keep_last: int) -> Path:
    """Write ``checkpoints/epoch-NNNN/`` (a model directory with ``state.json`` holding
    ``progress``) atomically, then remove all but the ``keep_last`` newest."""
    folder = run_dir / CHECKPOINTS_DIR
    path = save_model_dir(model, config, folder / f"{CHECKPOINT_PREFIX}{progress['epoch']:04d}",
                          extra_files={TRAIN_STATE: json.dumps({"progress": progress}, indent=1)})
    kept = sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit())
    for old in kept[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def mark_run_end(run_dir: Path, status: str, epoch: int) -> None:
    """Record that the run stopped (``status``: finished or diverged) after ``epoch``."""
    atomic_write_json(run_dir / RUN_END, {"status": status, "epoch": epoch})


def clear_run_end(run_dir: Path) -> None:
    """A run (re)starting is running again."""
    (run_dir / RUN_END).unlink(missing_ok=True)
