"""No command destroys what it did not create (DESIGN.md section 1, issue 18): an existing
output is replaced only when it is the same command's earlier output or --force is given,
and an output is never, never contains and never sits inside an input. The commands run
in this process (conftest.run_cli_here): the rules, not the process boundary, are tested."""

import json
import os
import stat

import numpy as np
import pytest

from conftest import error_line, random_image, run_cli_here as run_cli, write_image
from edgeseg.data.classes import CAMVID
from edgeseg.errors import OutputError
from edgeseg.fileio import atomic_replace_dir, atomic_write_text, check_output
from edgeseg.models import create_model, model_config_for, save_model_dir

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8)
    config = model_config_for(model, CAMVID, (64, 96), history=[{"stage": "train", "data": "synthetic:4"}])
    return save_model_dir(model, config, tmp_path_factory.mktemp("m") / "model")


def foreign_folder(path):
    """A folder edgeseg did not write, e.g. a user's run directory."""
    (path / "best").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def test_threshold_refuses_a_foreign_folder_and_keeps_it(model_dir, tmp_path):
    target = foreign_folder(tmp_path / "runs")
    line = error_line(run_cli("threshold", str(model_dir), "--out", str(target)))
    assert str(target) in line and "--force" in line and "not written by 'edgeseg threshold'" in line
    assert (target / "notes.txt").read_text() == "mine" and (target / "best").is_dir()


def test_a_commands_own_output_is_replaced_and_force_replaces_a_foreign_one(model_dir, tmp_path):
    target = tmp_path / "sparse"
    run_cli("threshold", str(model_dir), "--out", str(target), check=True)
    run_cli("threshold", str(model_dir), "--out", str(target), "--fraction-low", "0.5", check=True)
    assert json.loads((target / "config.json").read_text())["history"][-1]["fraction_low"] == 0.5
    other = foreign_folder(tmp_path / "other")
    run_cli("threshold", str(model_dir), "--out", str(other), "--force", check=True)
    assert (other / "config.json").is_file() and not (other / "notes.txt").exists()


@pytest.mark.parametrize("where", ["itself", "inside", "cwd", "parent"])
def test_an_output_is_never_an_input_or_the_current_folder(model_dir, tmp_path, where):
    out = {"itself": str(model_dir), "inside": str(model_dir / "sub"), "cwd": ".", "parent": ".."}[where]
    cwd = model_dir if where in ("cwd", "parent") else tmp_path
    before = sorted(p.name for p in model_dir.iterdir())
    line = error_line(run_cli("threshold", str(model_dir.resolve()), "--out", out, "--force", cwd=cwd))
    assert out in line
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_export_refuses_a_folder_for_a_file_and_a_foreign_bundle_folder(model_dir, tmp_path):
    folder = foreign_folder(tmp_path / "exported")
    line = error_line(run_cli("export", str(model_dir), "--format", "onnx", "--out", str(folder)))
    assert str(folder) in line and "is a folder" in line
    line = error_line(run_cli("export", str(model_dir), "--format", "bundle", "--out", str(folder)))
    assert str(folder) in line and "--force" in line
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("size", [["0", "0"], ["100000", "64"]])
def test_export_size_out_of_range_is_one_line(model_dir, tmp_path, size):
    line = error_line(run_cli("export", str(model_dir), "--size", *size, "--out", str(tmp_path / "m.onnx")))
    assert "size" in line


def test_predict_never_writes_over_photos_or_labels(model_dir, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.png", random_image(RNG, 64, 96))
    original = (photos / "a.png").read_bytes()
    line = error_line(run_cli("predict", str(model_dir), str(photos), "--out", str(photos)))
    assert str(photos) in line
    labels = tmp_path / "labels"
    write_image(labels / "a.png", np.zeros((64, 96, 3)))
    truth = (labels / "a.png").read_bytes()
    line = error_line(run_cli("predict", str(model_dir), str(photos), "--out", str(labels)))
    assert str(labels) in line and "--force" in line
    assert (photos / "a.png").read_bytes() == original and (labels / "a.png").read_bytes() == truth


def test_predict_into_its_own_folder_again_and_not_into_a_file(model_dir, tmp_path):
    write_image(tmp_path / "in" / "a.png", random_image(RNG, 64, 96))
    for _ in range(2):
        run_cli("predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "pred"), check=True)
    (tmp_path / "pred" / "b.png").write_bytes(b"user file")
    write_image(tmp_path / "in" / "b.png", random_image(RNG, 64, 96))
    line = error_line(run_cli("predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "pred")))
    assert str(tmp_path / "pred" / "b.png") in line
    (tmp_path / "file.png").write_bytes(b"x")
    line = error_line(run_cli("predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "file.png")))
    assert "is a file, not a folder" in line


def test_eval_json_refuses_a_folder_and_a_file_it_did_not_write(model_dir, tmp_path):
    common = ["eval", str(model_dir), "--data", "synthetic:2", "--device", "cpu", "--json"]
    assert "is a folder; give --json a file name" in error_line(run_cli(*common, str(tmp_path)))
    (tmp_path / "mine.json").write_text('{"my": "numbers"}')
    assert "--force" in error_line(run_cli(*common, str(tmp_path / "mine.json")))
    run_cli(*common, str(tmp_path / "eval.json"), check=True)
    run_cli(*common, str(tmp_path / "eval.json"), check=True)  # its own file: replaced
    assert json.loads((tmp_path / "eval.json").read_text())["written_by"] == "eval"


def test_check_output_rules(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    with pytest.raises(OutputError, match="inside the input"):
        check_output(source / "x", "threshold", [source])
    with pytest.raises(OutputError, match="contains the input"):
        check_output(tmp_path, "threshold", [source], force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, "threshold", [source]) == empty


def test_outputs_honour_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_replace_dir(lambda tmp: (tmp / "f").write_text("y"), tmp_path / "d")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
