"""Issue 18: what a hostile or careless user gives edgeseg ends in one line, never a
traceback, and never loses data: resume checks, divergence, hostile files, checkpoint repair."""

import functools
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from conftest import error_line, random_image, run_cli_here as run_cli, write_image, write_label
from edgeseg.data.classes import generic_classes
from edgeseg.data.doctor import check_dataset
from edgeseg.data.imageio import read_image, read_label_raw
from edgeseg.data.spec import open_source
from edgeseg.errors import ConfigError, DataError, EdgesegError, ModelError
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.models.model_dir import read_model_config
from edgeseg.schema import load_yaml
from edgeseg.training import loop
from edgeseg.training.checkpoint import recover_run_dir
from edgeseg.training.config import load_train_config, resume_config

TINY = ["data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.args={width: 4}",
        "data.num_workers=0", "tensorboard=false", "epochs=1", "seed=3"]
RNG = np.random.default_rng(18)


def tiny_config(tmp_path, *overrides):
    return load_train_config(None, [*TINY, f"runs_dir={tmp_path / 'runs'}", *overrides])


def png_bomb(path: Path) -> Path:
    """A grey PNG of 200 kilobytes that decodes to 14000 x 14000 pixels, over twice Pillow's limit."""
    path.write_bytes(_bomb_bytes())
    return path


@functools.lru_cache(maxsize=1)
def _bomb_bytes(side: int = 14000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\0" * ((side + 1) * side), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def folder_dataset(root: Path, label=None, n=2, suffix=".png") -> Path:
    for split in ("train", "val"):
        for i in range(n):
            write_image(root / split / "images" / f"f{i}.png", random_image(RNG, 32, 32))
            values = label(split, i) if label else RNG.integers(0, 3, (32, 32))
            path = root / split / "labels" / f"f{i}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return root


# --- item 2: resume may not change what the run computes ---------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    return loop.train(tiny_config(tmp, "name=r"), log=lambda _: None).run_dir


def test_resume_refuses_keys_that_change_results(finished_run):
    line = error_line(run_cli("train", "--resume", str(finished_run), "epochs=2", "data.spec=synthetic:12"))
    assert line == (f"error: {finished_run}: --resume cannot change what the run computes (data.spec, epochs differ "
                    f"from its config.yaml); start a new run to change them; after a divergence stop the lr, "
                    f"schedule and clip_grad_norm may change")
    with pytest.raises(ConfigError, match=r"\(optimizer.lr differ"):
        resume_config(finished_run, None, ["optimizer.lr=0.1"])


def test_resume_accepts_free_keys_and_records_them(finished_run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text((finished_run / "config.yaml").read_text().replace("num_workers: 0", "num_workers: 1"))
    config = resume_config(finished_run, other, ["log_every=5"])
    assert config.history == [{"resumed_after_epoch": 1, "changed": {"data.num_workers": [0, 1], "log_every": [20, 5]}}]
    assert resume_config(finished_run, None).history == []


# --- item 3: divergence -------------------------------------------------------------------

def test_divergence_stops_keeps_last_and_resumes_with_a_lower_lr(tmp_path, monkeypatch):
    real_loss, calls = loop.pixel_loss, []

    def poisoned(*args, **kwargs):
        criterion = real_loss(*args, **kwargs)

        def loss(logits, labels):
            calls.append(1)
            value = criterion(logits, labels)
            return value * float("nan") if len(calls) == 3 else value  # epoch 2, step 1 (2 steps per epoch)
        return loss

    monkeypatch.setattr(loop, "pixel_loss", poisoned)
    config = tiny_config(tmp_path, "name=d", "epochs=3")
    with pytest.raises(loop.TrainingDiverged) as caught:
        loop.train(config, log=lambda _: None)
    run = tmp_path / "runs" / "d"
    assert str(caught.value) == (f"training diverged at epoch 2, step 1 of 2: the loss is nan; {run}/last keeps epoch 1: "
                                 f"lower the lr and continue with 'edgeseg train --resume {run} optimizer.lr=0.0001'")
    assert json.loads((run / "last" / "state.json").read_text())["progress"]["epoch"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["history"][-1]["diverged"]["epoch"] == 2
    with pytest.raises(ConfigError, match=r"\(epochs differ"):
        resume_config(run, None, ["optimizer.lr=1e-4", "epochs=4"])
    monkeypatch.setattr(loop, "pixel_loss", real_loss)
    resumed = resume_config(run, None, ["optimizer.lr=1e-4"])
    assert resumed.history[-1] == {"resumed_after_epoch": 1, "changed": {"optimizer.lr": [1e-3, 1e-4]}}
    loop.train(resumed, resume_dir=run, log=lambda _: None)
    assert len(loop.read_metrics_csv(run / "metrics.csv")) == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["history"] == resumed.history
    with pytest.raises(ConfigError, match=r"\(optimizer.lr differ"):  # the divergence was answered
        resume_config(run, None, ["optimizer.lr=1e-5"])


def test_diverged_run_writes_no_model(tmp_path):
    with pytest.raises(loop.TrainingDiverged) as caught:
        loop.train(tiny_config(tmp_path, "name=nan", "optimizer.name=sgd", "optimizer.lr=1e30"), log=lambda _: None)
    assert str(caught.value).startswith("training diverged at epoch 1, step ") and str(caught.value).endswith(
        "nothing was saved: lower optimizer.lr (now 1e+30) and train again")
    assert not (tmp_path / "runs" / "nan" / "best").exists()


@pytest.fixture
def nan_model_dir(tmp_path):
    model = create_model("basic_encdec", num_classes=3, width=4)
    config = model_config_for(model, generic_classes(3), (32, 32))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ModelError, match="not written: weight 'stem.0.conv.weight' holds NaN or infinite values"):
        save_model_dir(model, config, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    path = tmp_path / "nan"  # as an older edgeseg could have written it
    path.mkdir()
    save_file(dict(model.state_dict()), str(path / "model.safetensors"))
    (path / "config.json").write_text(config.model_dump_json())
    return path


def test_export_check_fails_on_nan_logits(nan_model_dir, tmp_path):
    from edgeseg.export.onnx import ExportCheckError, export_onnx

    images = [(torch.randn(3, 32, 32), torch.randint(0, 3, (32, 32))) for _ in range(2)]
    with pytest.raises(ExportCheckError, match=r"nan.onnx: not written: \d+ logits are NaN or infinite on 2 check"):
        export_onnx(nan_model_dir, tmp_path / "nan.onnx", False, (32, 32), images)
    assert not (tmp_path / "nan.onnx").exists()


# --- item 4: each input that ended in a traceback or was silently accepted -----------------

def test_train_split_smaller_than_a_batch(tmp_path):
    with pytest.raises(ConfigError, match=r"^batch_size: the 'train' split has 2 images, fewer than one batch of 4 "):
        loop.train(tiny_config(tmp_path, "data.spec=synthetic:2"), log=lambda _: None)


@pytest.mark.parametrize("override, message", [
    ("model.args={width: 0}", "defaults: bad value for 'model.args': 'width' must be positive (got 0)"),
    ("model.args={width: -2}", "defaults: bad value for 'model.args': 'width' must be positive (got -2)"),
    ("augment.crop=[0,0]", "defaults: bad value for 'augment.crop.0': Input should be greater than 0 (and 1 more problem)"),
    ("name=../x", "defaults: bad value for 'name': must be a plain folder name under runs_dir (no '/' or '..'), got '../x'"),
])
def test_bad_train_values(override, message):
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, [override])
    assert str(caught.value) == message


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)), "not a text file (byte 128 is not UTF-8); expected YAML"),
    (b"", "the file is empty (no keys); give the keys it should set, or leave it out"),
    (b"# only a comment\n", "the file is empty (no keys); give the keys it should set, or leave it out"),
    (b"epochs: 1\nseed: 2\nepochs: 3\n", "line 3 invalid YAML (duplicate key 'epochs')"),
    (b"a: [1, 2\n", "line 2 invalid YAML"),
])
def test_bad_yaml_files(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_binary_config_on_the_command_line(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    assert error_line(run_cli("train", str(tmp_path / "bin.yaml"))) == \
        f"error: {tmp_path / 'bin.yaml'}: not a text file (byte 128 is not UTF-8); expected YAML"


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    bomb = png_bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"bomb.png: image too large to decode safely \(over 89 megapixels; a decomp"):
        read_image(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # between the limit and twice it Pillow only warns
    write_image(tmp_path / "big.png", random_image(RNG, 40, 40))
    with pytest.raises(DataError, match="big.png: image too large"):
        read_label_raw(tmp_path / "big.png")


def test_decompression_bomb_through_predict(tmp_path):
    model = create_model("basic_encdec", num_classes=3, width=4)
    save_model_dir(model, model_config_for(model, generic_classes(3), (32, 32)), tmp_path / "m")
    line = error_line(run_cli("predict", str(tmp_path / "m"), str(png_bomb(tmp_path / "b.png")), "--out",
                              str(tmp_path / "p")))
    assert line.startswith(f"error: {tmp_path / 'b.png'}: image too large to decode safely")


def test_exif_orientation_is_honoured(tmp_path):
    pixels = random_image(RNG, 20, 10)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    image.save(tmp_path / "phone.png", exif=exif)
    assert np.array_equal(read_image(tmp_path / "phone.png"), np.rot90(pixels, -1))


def test_sixteen_bit_label_beyond_the_class_range(tmp_path):
    root = folder_dataset(tmp_path / "d")
    Image.fromarray(np.full((32, 32), 300, np.uint16)).save(root / "train" / "labels" / "f0.png")
    with pytest.raises(DataError) as caught:
        open_source(f"folder:{root}")
    assert str(caught.value) == (f"{root}/train/labels/f0.png: label value 300 cannot be a class id (at most 254); "
                                 f"give classes.txt and void_values, or save labels as 8-bit class ids")


def test_stray_label_value_is_noted(tmp_path):
    stray = lambda split, i: np.where(np.arange(1024).reshape(32, 32) == 5, 9, RNG.integers(0, 3, (32, 32)))
    root = folder_dataset(tmp_path / "d", label=lambda s, i: stray(s, i) if (s, i) == ("val", 1) else
                          RNG.integers(0, 3, (32, 32)))
    notes = open_source(f"folder:{root}").notes
    assert notes == [f"classes inferred from label values as 0-9, but values 3-8 never occur: 9 (first in "
                     f"{root}/val/labels/f1.png) may be a stray value that adds classes; give classes.txt to fix "
                     f"the class list"]


def test_jpeg_labels_are_flagged_and_refused_unless_allowed(tmp_path):
    blocks = lambda s, i: np.kron(RNG.integers(0, 3, (4, 4)), np.ones((8, 8))) * 100
    root = folder_dataset(tmp_path / "d", label=blocks, suffix=".jpg")
    (root / "classes.txt").write_text("a\nb\nc\n")
    report = check_dataset(open_source(f"folder:{root}"))
    assert not report.clean
    problem = report.splits[0].problems[0]
    assert problem.startswith(f"{root}/train/labels/f0.jpg: lossy (JPEG) label file: ") and problem.endswith(
        "save labels as PNG (or set allow_lossy_labels: true in a dataset YAML)")
    with pytest.raises(DataError, match="f0.jpg: lossy \\(JPEG\\) label file"):
        open_source(f"folder:{root}").dataset("train").read(0)
    spec = tmp_path / "data.yaml"
    spec.write_text(f"format: folder\nroot: {root}\nallow_lossy_labels: true\nvoid_values: []\n")
    report = check_dataset(open_source(str(spec)))
    assert any("lossy (JPEG) label file" in w for w in report.splits[0].warnings)


def test_val_split_is_checked_before_epoch_one(tmp_path):
    bad = folder_dataset(tmp_path / "bad")
    (bad / "val" / "images" / "f1.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"val/images/f1.png: not a readable image"):
        loop.train(tiny_config(tmp_path, f"data.spec=folder:{bad}", "augment.crop=[32,32]", "batch_size=2",
                               "eval_every=3", "epochs=3", "name=bad"), log=lambda _: None)
    assert not (tmp_path / "runs" / "bad").exists()
    void = folder_dataset(tmp_path / "void", label=lambda s, i: np.full((32, 32), 255 if s == "val" else i))
    with pytest.raises(EdgesegError) as caught:
        loop.train(tiny_config(tmp_path, f"data.spec=folder:{void}", "augment.crop=[32,32]", "batch_size=2"),
                   log=lambda _: None)
    assert str(caught.value) == ("data.val_split: every pixel of the 'val' split (2 images) is void (255), so mIoU "
                                 "cannot be measured and no best/ saved")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["arguments"].update(width=-4), "bad value for 'arguments': 'width' must be positive (got -4)"),
    (lambda c: c.update(input_size=[-32, 32]), "bad value for 'input_size.0': Input should be greater than 0"),
    (lambda c: c.update(format_version=99), "bad value for 'format_version': format 99 is newer than this edgeseg "
                                            "reads (1); upgrade edgeseg"),
    (lambda c: c.pop("mean"), "missing required key 'mean'"),
])
def test_bad_config_json(tmp_path, edit, message):
    model = create_model("basic_encdec", num_classes=3, width=4)
    path = save_model_dir(model, model_config_for(model, generic_classes(3), (32, 32)), tmp_path / "m")
    data = json.loads((path / "config.json").read_text())
    edit(data)
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as caught:
        read_model_config(path)
    assert str(caught.value) == f"{path / 'config.json'}: {message}"


# --- item 5: checkpoint hygiene -------------------------------------------------------------

def test_recover_run_dir(tmp_path):
    run = tmp_path / "run"
    for name in (".last.x1.tmp", ".best.x2.tmp", "last.old", "best.old", "best", "keep.tmp"):
        (run / name).mkdir(parents=True)
    (run / ".metrics.csv.x3.tmp").write_text("")
    (run / "last.old" / "state.json").write_text("{}")
    done = recover_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["best", "keep.tmp", "last"]
    assert (run / "last" / "state.json").is_file() and len(done) == 4


def test_resume_from_last_old_after_a_kill_between_the_renames(finished_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    os.replace(run / "last", run / "last.old")
    (run / ".last.abc.tmp").mkdir()
    lines = []
    loop.train(resume_config(run, None, ["epochs=1"]), resume_dir=run, log=lines.append)
    assert f"{run}: restored last/ from last.old/ (the run stopped while replacing it)" in lines
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("tb")) == \
        ["best", "config.yaml", "confusion.png", "curves.png", "finished.json", "last", "metrics.csv"]


def test_pipeline_settings_check_covers_report_split_and_ignores_stages_that_did_no_work(tmp_path):
    from edgeseg.pipeline import load_recipe
    from edgeseg.pipeline.runner import _check_unchanged, stage_settings

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump({"name": "p", "out_dir": str(tmp_path / "p"),
                                           "train": {"data": {"spec": "synthetic:8"}}, "stages": {"dense": {"stage": "train"}}}))
    stage_dir = tmp_path / "p" / "stages" / "01-dense"
    stage_dir.mkdir(parents=True)
    recipe, stages = load_recipe(recipe_file)
    (stage_dir / "spec.json").write_text(json.dumps(stage_settings(recipe, "dense", stages["dense"], stage_dir)))
    changed, stages = load_recipe(recipe_file, ["report.split=test", "stages.dense.train.epochs=3"])
    _check_unchanged(stage_dir, stage_settings(changed, "dense", stages["dense"], stage_dir), stages["dense"])  # no work
    (stage_dir / "run" / "last").mkdir(parents=True)
    (stage_dir / "run" / "last" / "state.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"01-dense: this stage ran with other settings \(changed: report_split, "
                                          r"train.epochs\)"):
        _check_unchanged(stage_dir, stage_settings(changed, "dense", stages["dense"], stage_dir), stages["dense"])


def test_a_pipeline_recorded_before_a_key_existed_still_resumes(tmp_path):
    """Keys added to the schema since a stage ran (at their defaults) are not changes; a real
    change still is."""
    from edgeseg.pipeline import load_recipe
    from edgeseg.pipeline.runner import _check_unchanged, stage_settings

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump({"name": "p", "out_dir": str(tmp_path / "p"),
                                           "train": {"data": {"spec": "synthetic:8"}},
                                           "stages": {"dense": {"stage": "train"}, "prune": {"keep": 0.5}}}))
    recipe, stages = load_recipe(recipe_file)
    for index, name, newer_key in ((1, "dense", "head_weights"), (2, "prune", "channel_multiple")):
        stage_dir = tmp_path / "p" / "stages" / f"0{index}-{name}"
        stage_dir.mkdir(parents=True)
        (stage_dir / "metrics.json").write_text("{}")
        older = stage_settings(recipe, name, stages[name], stage_dir)
        section = older["train"]["loss"] if name == "dense" else older  # a nested key and a top-level one
        assert newer_key in section
        section.pop(newer_key)
        (stage_dir / "spec.json").write_text(json.dumps(older))
        _check_unchanged(stage_dir, stage_settings(recipe, name, stages[name], stage_dir), stages[name])
    # what `edgeseg train --resume` may change is no change to a pipeline stage either
    free, stages = load_recipe(recipe_file, ["stages.dense.train.memory_saving=true", "stages.dense.train.save_every=2"])
    stage_dir = tmp_path / "p" / "stages" / "01-dense"
    _check_unchanged(stage_dir, stage_settings(free, "dense", stages["dense"], stage_dir), stages["dense"])
    changed, stages = load_recipe(recipe_file, ["stages.prune.channel_multiple=8"])
    stage_dir = tmp_path / "p" / "stages" / "02-prune"
    with pytest.raises(ConfigError, match=r"changed: channel_multiple\)"):
        _check_unchanged(stage_dir, stage_settings(changed, "prune", stages["prune"], stage_dir), stages["prune"])


# --- the bundle's run.py -------------------------------------------------------------------

def test_bundle_run_py_errors_are_one_line(tmp_path):
    from edgeseg.export.bundle import write_bundle

    model = create_model("basic_encdec", num_classes=3, width=4)
    path = save_model_dir(model, model_config_for(model, generic_classes(3), (32, 32)), tmp_path / "m")
    images = [(torch.randn(3, 32, 32), torch.randint(0, 3, (32, 32)))]
    write_bundle(path, tmp_path / "bundle", (32, 32), images)
    (tmp_path / "junk.png").write_bytes(b"hello")
    (tmp_path / "empty.png").write_bytes(b"")
    write_image(tmp_path / "good.png", random_image(RNG, 32, 32))
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:200])
    png_bomb(tmp_path / "bomb.png")
    cases = {("junk.png",): "junk.png: not a readable image (unknown or corrupt format)",
             ("empty.png",): "empty.png: not a readable image (unknown or corrupt format)",
             ("cut.png",): "cut.png: truncated or corrupt image",
             ("bomb.png",): "bomb.png: image too large to decode safely (a decompression bomb?)",
             ("good.png", "-m", "nothere.onnx"): "nothere.onnx: model file not found",
             ("good.png", "-m", "junk.png"): "junk.png: not a readable ONNX model"}
    for args, message in cases.items():
        proc = subprocess.run([sys.executable, str(tmp_path / "bundle" / "run.py"), "-i", *args, "-o", "out"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert error_line(proc).startswith(f"error: {message}"), proc.stderr
