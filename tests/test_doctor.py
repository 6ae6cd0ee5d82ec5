"""The label doctor: shares, class weights, and every kind of problem named by file."""

import json
import math

import numpy as np
import pytest

from conftest import CAMVID, needs_camvid, random_image, run_cli_here as run_cli, write_image, write_label
from edgeseg.data.doctor import SplitReport, class_weights

RNG = np.random.default_rng(7)


def test_class_weights_by_hand():
    report = SplitReport("train", 2)
    # image 1: 6 px of class 0, 2 px of class 1; image 2: 8 px of class 0
    report.add_counts(np.bincount([0] * 6 + [1] * 2, minlength=256))
    report.add_counts(np.bincount([0] * 8, minlength=256))
    weights = class_weights(report, 3)
    freq0, freq1 = 14 / 16, 2 / 8
    median = (freq0 + freq1) / 2
    assert weights["median_frequency"][:2] == pytest.approx([median / freq0, median / freq1])
    assert weights["median_frequency"][2] is None
    assert weights["enet"][:2] == pytest.approx([1 / math.log(1.02 + 14 / 16), 1 / math.log(1.02 + 2 / 16)])


def test_doctor_lists_every_problem_and_exits_non_zero(tmp_path):
    root = tmp_path / "f"
    palette_a = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759
    palette_b = [0, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * 759
    for i in range(6):
        write_image(root / "images" / f"p{i}.png", random_image(RNG, 8, 8))
        write_label(root / "labels" / f"p{i}.png", RNG.integers(0, 3, (8, 8)), palette_a)
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    write_image(root / "images" / "orphan.png", random_image(RNG, 8, 8))
    write_label(root / "labels" / "p1.png", np.full((8, 8), 9), palette_a)
    write_label(root / "labels" / "p2.png", np.zeros((4, 8)), palette_a)
    write_label(root / "labels" / "p3.png", RNG.integers(0, 3, (8, 8)), palette_b)
    (root / "labels" / "p4.png").write_bytes((root / "labels" / "p4.png").read_bytes()[:50])
    proc = run_cli("data", "check", f"folder:{root}", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 1, proc.stderr
    text = proc.stdout
    assert "orphan.png: image has no label of the same name" in text
    assert "p1.png: label values out of range: 9" in text
    assert "p2.png: label size 8x4 differs from image p2.png size 8x8" in text
    assert "p3.png: palette differs from" in text
    assert "p4.png: truncated or corrupt image" in text
    assert "class 'd' (3) has no pixels" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["clean"] is False


def test_doctor_on_clean_synthetic_data_exits_zero():
    proc = run_cli("data", "check", "synthetic:8", "--split", "val")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clean: no problems found" in proc.stdout and "pedestrian" in proc.stdout


@needs_camvid
def test_doctor_on_camvid_reports_the_known_class_shares(tmp_path):
    proc = run_cli("data", "check", f"camvid:{CAMVID}", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = json.loads((tmp_path / "r.json").read_text())["splits"]["train"]
    assert train["num_images"] == 367
    share = train["class_share"]
    assert share["road"] == pytest.approx(0.317, abs=0.001)
    assert share["building"] == pytest.approx(0.233, abs=0.001)
    assert share["sky"] == pytest.approx(0.169, abs=0.001)
    assert train["ignore_share"] == pytest.approx(0.040, abs=0.001)
