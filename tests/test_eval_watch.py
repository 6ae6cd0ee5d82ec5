"""edgeseg eval RUN_DIR --watch/--all following periodic checkpoints, and --pad-to-shape."""

import csv
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import error_line, run_cli, run_cli_here
from edgeseg.data.classes import ClassInfo
from edgeseg.models import create_model
from edgeseg.models.model_dir import ModelConfig
from edgeseg.predict.predictors import TorchPredictor, with_pad_to_shape
from edgeseg.training.checkpoint import save_periodic_checkpoint
from edgeseg.training.loop import read_metrics_csv

TINY = ["data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.args={width: 4}",
        "data.num_workers=0", "seed=3", "deterministic=true", "tensorboard=false"]


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_watcher_evaluates_each_checkpoint_once_while_the_run_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    training = subprocess.Popen([sys.executable, "-m", "edgeseg", "train", *TINY, "epochs=4", "save_every=1",
                                 f"runs_dir={tmp_path}", "name=w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    run_dir = tmp_path / "w"
    deadline = time.monotonic() + 120
    while not (run_dir / "config.yaml").is_file() and training.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    watcher = run_cli("eval", str(run_dir), "--watch", "--timeout", "240")
    stdout, stderr = training.communicate(timeout=240)
    assert training.returncode == 0, stdout + stderr
    assert watcher.returncode == 0, watcher.stdout + watcher.stderr
    assert "(run finished)" in watcher.stdout
    rows = read_csv(run_dir / "eval" / "evaluations.csv")
    assert [r["checkpoint"] for r in rows] == ["epoch-0001", "epoch-0002", "epoch-0003", "epoch-0004"]
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "eval").iterdir())
    # the same models the run evaluated after each epoch
    trained = read_metrics_csv(run_dir / "metrics.csv")
    for row, epoch in zip(rows, trained, strict=True):
        assert float(row["miou"]) == pytest.approx(float(epoch["val_miou"]), abs=1e-5)
        assert int(row["step"]) == int(epoch["step"])
    again = run_cli_here("eval", str(run_dir), "--watch", check=True)  # an earlier watcher's work is kept
    assert "4 checkpoints already evaluated" in again.stdout and "evaluated 0 checkpoints" in again.stdout
    every = run_cli_here("eval", str(run_dir), "--all", "--eval-dir", str(tmp_path / "all"), check=True)
    assert "evaluated 4 checkpoints (all evaluated)" in every.stdout
    assert [r["miou"] for r in read_csv(tmp_path / "all" / "evaluations.csv")] == [r["miou"] for r in rows]


def test_periodic_checkpoints_keep_the_newest(tmp_path):
    model = create_model("basic_encdec", 3, width=4)
    config = ModelConfig(architecture="basic_encdec", num_classes=3, arguments={"width": 4}, classes=["a", "b", "c"],
                         palette=[(0, 0, 0)] * 3, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(32, 32), output_stride=8)
    for epoch in range(1, 6):
        save_periodic_checkpoint(tmp_path, model, config, {"epoch": epoch, "step": 2 * epoch}, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0004", "epoch-0005"]


def test_watch_needs_a_run_with_periodic_checkpoints(tmp_path):
    run_cli_here("train", *TINY, "epochs=1", f"runs_dir={tmp_path}", "name=r", check=True)
    assert error_line(run_cli_here("eval", str(tmp_path / "r"), "--watch")).endswith(
        "the run keeps no periodic checkpoints to follow (train with save_every=N)")
    assert error_line(run_cli_here("eval", str(tmp_path / "r"))).endswith(
        "--data is required (a run directory is followed with --watch or --all)")


class Pointwise(torch.nn.Module):
    """A model whose output at a pixel depends on that pixel only: padding cannot change it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        assert x.shape[-2:] == (48, 64) or x.shape[-2:] == self.unpadded
        return self.conv(x)


def test_pad_to_shape_pads_exactly_and_crops_back():
    config = ModelConfig(architecture="pointwise", num_classes=3, classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3,
                         mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(48, 64), output_stride=16)
    model = Pointwise()
    images = torch.randn(2, 3, 32, 48)
    model.unpadded = (32, 48)
    plain = TorchPredictor(model, config, torch.device("cpu")).logits(images)
    padded = with_pad_to_shape(TorchPredictor(model, config, torch.device("cpu")), (48, 64))
    assert torch.equal(padded.logits(images), plain)
    with pytest.raises(Exception, match="image 32x48 is larger than --pad-to-shape 32 32"):
        with_pad_to_shape(TorchPredictor(model, config, torch.device("cpu")), (32, 32)).logits(images)
    with pytest.raises(Exception, match="--pad-to-shape 40 64: both sides must be positive multiples of the model's "
                                        "output stride 16"):
        with_pad_to_shape(padded, (40, 64))


def test_pad_to_shape_on_the_command_line(tmp_path):
    run_cli_here("train", *TINY, "epochs=1", f"runs_dir={tmp_path}", "name=p", check=True)
    best = str(tmp_path / "p" / "best")
    assert "mIoU" in run_cli_here("eval", best, "--data", "synthetic:8", "--pad-to-shape", "256", "320",
                                  check=True).stdout
    assert error_line(run_cli_here("eval", best, "--data", "synthetic:8", "--pad-to-shape", "64", "96")).endswith(
        "image 240x320 is larger than --pad-to-shape 64 96")
    out = tmp_path / "pred"
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (90, 60), (120, 30, 200)).save(image)
    run_cli_here("predict", best, str(image), "--out", str(out), "--pad-to-shape", "64", "96", check=True)
    assert Image.open(out / "x.png").size == (90, 60)
