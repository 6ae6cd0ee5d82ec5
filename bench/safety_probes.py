"""Issue 18's safety probes (items 2-6): each hostile or careless input run as a user would,
printed as a table of command, exit code and the last line of output (or the exception type).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/safety_probes.py [--only ID ...] [--keep DIR]

Tiny data and models: the whole table takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

TINY = ["data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.args={width: 4}",
        "data.num_workers=0", "tensorboard=false", "epochs=1"]
RNG = np.random.default_rng(0)


# the commands run in a work folder: PYTHONPATH=src must still name this tree's src
ENV = {**os.environ, "CI": "1", "PYTHONPATH": os.pathsep.join(
    str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)}


def cli(*args: str, cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=600)
    return proc.returncode, summary(proc)


def script(path: Path, *args: str, cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=600)
    return proc.returncode, summary(proc)


def summary(proc) -> str:
    """The exception type of a traceback, else the last line of stderr, else of stdout."""
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in err):
        return "TRACEBACK " + err[-1][:150]
    lines = err or [line for line in proc.stdout.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:170]


def folder(root: Path, n: int = 4, size=(32, 32), label=None, suffix=".png", splits=("train", "val")) -> Path:
    for split in splits:
        for i in range(n):
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / "images" / f"f{i}.png")
            values = label(split, i) if label else RNG.integers(0, 3, size)
            Image.fromarray(values.astype(np.uint8), mode="L").save(root / split / "labels" / f"f{i}{suffix}",
                                                                     **({"quality": 75} if suffix == ".jpg" else {}))
    return root


def model_dir(path: Path, width=4, size=(32, 32), nan=False, edit=None) -> Path:
    import torch

    from edgeseg.data.classes import generic_classes
    from edgeseg.models import create_model, model_config_for, save_model_dir

    model = create_model("basic_encdec", num_classes=3, width=width)
    if nan:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    config = model_config_for(model, generic_classes(3), size, history=[{"stage": "train", "data": None}])
    if nan:  # save_model_dir refuses NaN weights now: write the files as an older edgeseg would have
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(config.model_dump_json())
    else:
        save_model_dir(model, config, path)
    if edit:
        data = json.loads((path / "config.json").read_text())
        edit(data)
        (path / "config.json").write_text(json.dumps(data))
    return path


def bomb(path: Path) -> Path:
    """A 20000 x 20000 grey PNG of a few hundred kilobytes: 400 megapixels when decoded."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    side = 20000
    raw = zlib.compress(b"\0" * ((side + 1) * side), 9)
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def recipe(path: Path, out: Path, spec: str, stages: dict, report=None) -> Path:
    data = {"name": "p", "out_dir": str(out),
            "train": {"data": {"spec": spec, "num_workers": 0}, "model": {"args": {"width": 4}},
                      "augment": {"crop": [32, 32]}, "epochs": 1, "batch_size": 2, "tensorboard": False},
            "report": {"latency_runs": 1, **(report or {})}, "stages": stages}
    path.write_text(yaml.safe_dump(data))
    return path


def probes(w: Path, bundle_run: Path | None):
    """(id, what, callable returning (command, rc, line))."""
    d = folder(w / "data")

    def resume_override():
        code, line = cli("train", *TINY, "name=r", cwd=w)
        code, line = cli("train", "--resume", "runs/r", "epochs=2", "data.spec=synthetic:12", cwd=w)
        return "train --resume runs/r epochs=2 data.spec=synthetic:12", code, line

    def diverge():
        code, line = cli("train", *TINY, "name=nan", "optimizer.lr=1e12", "optimizer.name=sgd", cwd=w)
        best = w / "runs" / "nan" / "best"
        return "train ... optimizer.lr=1e12", code, line + f" [best/ written: {best.is_dir()}]"

    def export_nan():
        m = model_dir(w / "nanmodel", nan=True)
        code, line = cli("export", str(m), "--format", "onnx", "--data", f"folder:{d}", "--out", "nan.onnx", cwd=w)
        return "export NANMODEL --format onnx", code, line

    def void_val():
        v = folder(w / "voidval", label=lambda s, i: np.full((32, 32), 255) if s == "val" else RNG.integers(0, 3, (32, 32)))
        code, line = cli("train", *TINY[2:], "augment.crop=[32,32]", "batch_size=2", f"data.spec=folder:{v}", "name=v", cwd=w)
        return "train data.spec=folder:VOIDVAL", code, line + f" [best/: {(w / 'runs/v/best').is_dir()}]"

    def void_val_run():
        v = w / "voidval"
        r = recipe(w / "void.yaml", w / "pvoid", f"folder:{v}", {"dense": {"stage": "train"}})
        return "run RECIPE (val all void)", *cli("run", str(r), cwd=w)

    def small_train():
        return "train data.spec=synthetic:2 batch_size=4", *cli("train", *TINY, "data.spec=synthetic:2", cwd=w)

    def width(value):
        return lambda: (f"train model.args.width={value}",
                        *cli("train", *TINY, f"model.args={{width: {value}}}", cwd=w))

    def crop0():
        return "train augment.crop=[0,0]", *cli("train", *TINY, "augment.crop=[0,0]", cwd=w)

    def binary_config():
        (w / "bin.yaml").write_bytes(bytes(range(256)) * 4)
        return "train bin.yaml (binary)", *cli("train", "bin.yaml", cwd=w)

    def empty_config():
        (w / "empty.yaml").write_text("")
        return "train empty.yaml", *cli("train", "empty.yaml", *TINY, "name=e", cwd=w)

    def duplicate_keys():
        (w / "dup.yaml").write_text("seed: 1\nname: dup\nseed: 2\n")
        return "train dup.yaml (seed twice)", *cli("train", "dup.yaml", *TINY, cwd=w)

    def bomb_eval():
        b = folder(w / "bomb", n=1)
        bomb(b / "val" / "images" / "f0.png")
        m = model_dir(w / "m32")
        return "eval MODEL --data folder:BOMB", *cli("eval", str(m), "--data", f"folder:{b}", "--device", "cpu", cwd=w)

    def bomb_predict():
        m = w / "m32"
        return "predict MODEL bomb.png", *cli("predict", str(m), str(bomb(w / "bomb.png")), "--out", "pb", cwd=w)

    def bomb_check():
        return "data check folder:BOMB", *cli("data", "check", f"folder:{w / 'bomb'}", cwd=w)

    def label16():
        root = w / "l16"
        folder(root, n=2)
        Image.fromarray(np.full((32, 32), 300, np.uint16)).save(root / "train" / "labels" / "f0.png")
        return "data check folder:L16 (16-bit label 300)", *cli("data", "check", f"folder:{root}", cwd=w)

    def config_json(name, edit):
        def probe():
            m = model_dir(w / f"cj-{name}", edit=edit)
            return f"eval config.json {name}", *cli("eval", str(m), "--data", f"folder:{d}", "--device", "cpu", cwd=w)
        return probe

    def jpeg_doctor():
        j = folder(w / "jpeg", suffix=".jpg", label=lambda s, i: np.kron(RNG.integers(0, 3, (7, 7)), np.ones((5, 5)))[:32, :32])
        return "data check folder:JPEG (JPEG labels)", *cli("data", "check", f"folder:{j}", cwd=w)

    def jpeg_train():
        return "train data.spec=folder:JPEG", *cli("train", *TINY[1:], "augment.crop=[32,32]", "batch_size=2",
                                                   f"data.spec=folder:{w / 'jpeg'}", "name=j", cwd=w)

    def stray():
        s = folder(w / "stray", label=lambda sp, i: np.where(np.arange(32 * 32).reshape(32, 32) == 5, 9,
                                                              RNG.integers(0, 3, (32, 32))) if i == 0 else RNG.integers(0, 3, (32, 32)))
        proc = subprocess.run([sys.executable, "-m", "edgeseg", "data", "check", f"folder:{s}"], capture_output=True,
                              text=True, cwd=w, env=ENV)
        note = next((line for line in proc.stdout.splitlines() if "stray value" in line), "")
        return "data check folder:STRAY (one pixel of 9)", proc.returncode, summary(proc) + f" [{note[:90]}]"

    def bad_val_late():
        b = folder(w / "badval")
        (b / "val" / "images" / "f1.png").write_bytes(b"not an image")
        code, line = cli("train", *TINY[1:], "augment.crop=[32,32]", "batch_size=2", f"data.spec=folder:{b}",
                         "epochs=3", "eval_every=3", "name=bv", cwd=w)
        rows = w / "runs" / "bv" / "metrics.csv"
        done = len(rows.read_text().splitlines()) - 1 if rows.is_file() else 0
        return "train data.spec=folder:BADVAL epochs=3 eval_every=3", code, line + f" [epochs trained first: {done}]"

    def escape():
        code, line = cli("train", *TINY, "name=../escaped", "runs_dir=inner", cwd=w)
        return "train name=../escaped runs_dir=inner", code, line + f" [outside: {(w / 'escaped').exists()}]"

    def exif():
        m = model_dir(w / "m3264", size=(32, 64))
        img = Image.fromarray(RNG.integers(0, 256, (64, 32, 3), dtype=np.uint8))  # stored 32 wide, 64 high
        exif_data = img.getexif()
        exif_data[0x0112] = 6  # rotate 90: shown 64 wide, 32 high
        img.save(w / "exif.jpg", exif=exif_data)
        code, line = cli("predict", str(m), str(w / "exif.jpg"), "--out", "pe", cwd=w)
        out = w / "pe" / "exif.png"
        shape = Image.open(out).size if out.is_file() else None
        return "predict MODEL exif.jpg (orientation 6)", code, line + f" [output w x h: {shape}, shown 64x32]"

    def stale_tmp():
        cli("train", *TINY, "name=k", "epochs=2", cwd=w)
        run = w / "runs" / "k"
        (run / ".last.abc123.tmp").mkdir()
        (run / ".best.abc123.tmp").mkdir()
        code, line = cli("train", "--resume", str(run), cwd=w)
        left = sorted(p.name for p in run.glob(".*.tmp"))
        return "train --resume RUN (after kill in a checkpoint write)", code, line + f" [temp left: {left}]"

    def last_old():
        run = w / "runs" / "k"
        shutil.rmtree(run / "last.old", ignore_errors=True)
        os.replace(run / "last", run / "last.old")
        return "train --resume RUN (only last.old)", *cli("train", "--resume", str(run), "epochs=2", cwd=w)

    def report_split():
        base = folder(w / "rs", splits=("train", "val", "test"))
        r = recipe(w / "rs.yaml", w / "prs", f"folder:{base}", {"dense": {"stage": "train"}})
        cli("run", str(r), cwd=w)
        return "run RECIPE report.split=test (after val)", *cli("run", str(r), "report.split=test", cwd=w)

    def failed_before_work():
        r = recipe(w / "fw.yaml", w / "pfw", "synthetic:8", {"dense": {"stage": "train", "train": {"augment": {"crop": [30, 30]}}}})
        cli("run", str(r), cwd=w)
        return ("run RECIPE (crop fixed after a failed start)",
                *cli("run", str(r), "stages.dense.train.augment.crop=[32,32]", cwd=w))

    table = [
        ("2", "resume with changed data", resume_override),
        ("3a", "diverged run", diverge),
        ("3b", "export of a NaN model", export_nan),
        ("3c", "val split with no labelled pixels", void_val),
        ("3d", "pipeline on it", void_val_run),
        ("4a", "train split < batch", small_train),
        ("4b", "width 0", width(0)),
        ("4c", "width -2", width(-2)),
        ("4d", "crop 0x0", crop0),
        ("4e", "binary config", binary_config),
        ("4f", "decompression bomb: eval", bomb_eval),
        ("4g", "decompression bomb: predict", bomb_predict),
        ("4h", "decompression bomb: doctor", bomb_check),
        ("4i", "16-bit label 300", label16),
        ("4j", "config.json width -4", config_json("width-neg", lambda c: c["arguments"].update(width=-4))),
        ("4k", "config.json input size -32", config_json("size-neg", lambda c: c.update(input_size=[-32, 32]))),
        ("4l", "config.json format_version 99", config_json("fv99", lambda c: c.update(format_version=99))),
        ("4m", "config.json without mean", config_json("nomean", lambda c: c.pop("mean"))),
        ("4n", "JPEG labels: doctor", jpeg_doctor),
        ("4o", "JPEG labels: train", jpeg_train),
        ("4p", "stray label value", stray),
        ("4q", "empty config", empty_config),
        ("4r", "duplicate YAML keys", duplicate_keys),
        ("4s", "bad val file", bad_val_late),
        ("4t", "name escapes runs_dir", escape),
        ("4u", "EXIF orientation", exif),
        ("5a", "stale checkpoint temp folders", stale_tmp),
        ("5b", "last.old only", last_old),
        ("5c", "report.split changed", report_split),
        ("5d", "stage failed before work", failed_before_work),
    ]
    if bundle_run is not None:
        table += bundle_probes(w, d, bundle_run)
    return table


def bundle_probes(w: Path, d: Path, run_py: Path):
    def make():
        m = w / "m32"
        if not m.is_dir():
            model_dir(m)
        cli("export", str(m), "--format", "bundle", "--data", f"folder:{d}", "--out", "bundle", cwd=w)
        (w / "junk.png").write_bytes(b"hello, not an image")
        (w / "empty.png").write_bytes(b"")
        good = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good, "PNG")
        (w / "cut.png").write_bytes(good.getvalue()[:200])
        bomb(w / "bomb.png")

    def probe(name, *args):
        def run():
            if not (w / "bundle" / "run.py").is_file():
                make()
            return f"bundle/run.py {' '.join(args)}", *script(w / "bundle" / "run.py", *args, cwd=w)
        return (f"4v-{name}", f"bundle run.py: {name}", run)

    return [probe("non-image", "-i", "junk.png"), probe("empty", "-i", "empty.png"), probe("truncated", "-i", "cut.png"),
            probe("bomb", "-i", "bomb.png"), probe("missing model", "-i", "junk.png", "-m", "nothere.onnx")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="probe ids (prefixes)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--no-bundle", action="store_true")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="edgeseg-probes-"))
    work.mkdir(parents=True, exist_ok=True)
    print("| id | case | command | exit | last line |\n|---|---|---|---|---|", flush=True)
    for pid, what, probe in probes(work, None if args.no_bundle else True):
        if args.only and not any(pid.startswith(p) for p in args.only):
            continue
        try:
            command, code, line = probe()
        except Exception as err:  # a probe's own setup failed
            command, code, line = "(setup)", "-", f"probe failed: {type(err).__name__}: {err}"
        line = re.sub(r"/tmp/[^ :]*?/", "", line).replace("|", "/")
        print(f"| {pid} | {what} | `edgeseg {command}` | {code} | {line} |", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
