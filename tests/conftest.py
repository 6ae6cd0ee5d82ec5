import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"

torch.set_num_threads(1)


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def write_label(path: Path, values: np.ndarray, palette: list[int] | None = None) -> Path:
    """An index label PNG: mode P with ``palette``, else mode L."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        img.putpalette(palette)
    img.save(path)
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m edgeseg ARGS`` as a user would."""
    env = {**os.environ, "CI": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeseg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli_here(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """``edgeseg ARGS`` through the same entry point as the console script, in this process
    (no interpreter start-up or PyTorch import per call): for tests of a command's rules,
    where the process boundary is not the point."""
    import contextlib
    import io

    from edgeseg.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    previous_argv, previous_cwd, code = sys.argv, Path.cwd(), 0
    try:
        sys.argv = ["edgeseg", *args]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = previous_argv
        os.chdir(previous_cwd)
    proc = subprocess.CompletedProcess(["edgeseg", *args], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"edgeseg {' '.join(args)} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a failed command printed to stderr (asserts there is exactly one)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return lines[0]


needs_camvid = pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (shared data absent)")


@torch.no_grad()
def randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine values, as training would."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.uniform_(-1.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    return model


def write_tiny_folders(root: Path, count: int = 10, size: int = 32) -> Path:
    """images/ and labels/ (paletted PNGs, 3 classes: a vertical bar of class 1 over class 0,
    a floor of class 2) and classes.txt under ``root``; the image colours follow the classes,
    so a tiny model learns them in an epoch or two."""
    rng = np.random.default_rng(0)
    palette = [0, 0, 0, 200, 40, 40, 40, 160, 40]
    for index in range(count):
        label = np.zeros((size, size), np.uint8)
        left = int(rng.integers(2, size - 12))
        label[:, left:left + 10] = 1
        label[size * 5 // 8:, :] = 2
        noise = rng.integers(0, 30, (size, size))
        image = np.stack([label * 90 + noise, 100 - label * 30 + noise, label * 40 + 20], -1)
        write_image(root / "images" / f"im{index:02d}.png", image)
        write_label(root / "labels" / f"im{index:02d}.png", label, palette)
    (root / "classes.txt").write_text("background\nbar\nfloor\n", encoding="utf-8")
    return root
