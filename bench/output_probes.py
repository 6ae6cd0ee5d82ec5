"""Issue 18 item 1, the output paths that destroyed data: each probe run as a user would,
printed as a table of command, exit code, last line of output and whether the thing the
command should not have touched survived.

    python bench/output_probes.py [--src SRC] [--legacy-flags]   # SRC: the source tree to probe (./src)

Each probe gets a fresh folder with a tiny model directory, a "run directory" a user cares
about, a folder of photos and a folder of ground-truth labels.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SETUP = """
import sys
from edgeseg.data.classes import CAMVID
from edgeseg.models import create_model, model_config_for, save_model_dir
model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8)
config = model_config_for(model, CAMVID, (64, 96), history=[{"stage": "train", "data": "synthetic:2"}])
save_model_dir(model, config, sys.argv[1])
"""

PROBES = [  # (name, command after 'edgeseg', the path that must survive)
    ("bundle --out over a run dir", "export model --format bundle --out run --check-images 1", "run"),
    ("threshold --out over a run dir", "threshold model --out run", "run"),
    ("quantize --out over a run dir", "quantize model --out run --calibration-batches 1 --data synthetic:2", "run"),
    ("fold-bn --out over a run dir", "fold-bn model --out run", "run"),
    ("threshold --out = the source model", "threshold model --out model", "model"),
    ("threshold --out .", "threshold model --out .", "."),
    ("threshold --out ..", "threshold model --out ..", "model"),
    ("predict --out = the photos", "predict model photos --out photos", "photos"),
    ("predict --out = the labels", "predict model photos --out labels", "labels"),
    ("predict --out FILE", "predict model photos --out notes.txt", "notes.txt"),
    ("export --out DIR (onnx)", "export model --format onnx --out run --check-images 1", "run"),
    ("eval --json DIR", "eval model --data synthetic:2 --json run", "run"),
    ("export --size 0 0", "export model --format onnx --size 0 0 --out m.onnx", "model"),
]


def digest(path: Path) -> str:
    """A hash of every file's name and bytes under ``path`` (a file or folder)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(path.parent)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def prepare(root: Path, python: list[str], env: dict) -> None:
    subprocess.run([*python, "-c", SETUP, str(root / "model")], env=env, check=True)
    (root / "run" / "best").mkdir(parents=True)
    (root / "run" / "metrics.csv").write_text("epoch,val_miou\n1,0.5\n")
    rng = np.random.default_rng(0)
    for folder in ("photos", "labels"):
        (root / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(root / folder / "a.png")
    (root / "notes.txt").write_text("my notes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path("src"), help="edgeseg source tree to probe")
    parser.add_argument("--legacy-flags", action="store_true",
                        help="edgeseg 0.1's flags (--size H --size W, no --check-images), to probe the old tree")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "CI": "1", "OMP_NUM_THREADS": "1"}
    python = [sys.executable]
    print(f"edgeseg from {args.src.resolve()}")
    print("| case | command | exit | last line | survived |")
    print("|---|---|---:|---|---|")
    for name, command, keep in PROBES:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "w"
            root.mkdir()
            prepare(root, python, env)
            before = digest(root / keep) if keep != "." else digest(root)
            if args.legacy_flags:
                command = command.replace(" --check-images 1", "").replace("--size 0 0", "--size 0 --size 0")
            proc = subprocess.run([*python, "-m", "edgeseg", *command.split()], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=300)
            target = root / keep if keep != "." else root
            after = digest(target) if target.exists() else "gone"
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            if "Traceback" in proc.stderr:
                last = "traceback: " + last
            last = last.replace(str(root), "W").replace("|", "/")[:110]
            print(f"| {name} | `edgeseg {command}` | {proc.returncode} | {last} | "
                  f"{'yes' if before == after else 'NO: ' + ('deleted' if after == 'gone' else 'changed')} |")


if __name__ == "__main__":
    main()
