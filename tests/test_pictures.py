"""Pictures: training curves, confusion matrices, class shares and overlay legends are real
images, drawn from the numbers they claim to show."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from edgeseg.data.classes import CAMVID, generic_classes


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image.size


def test_legend_strip_shows_exactly_the_colours_of_the_classes_present():
    from edgeseg.export import bundle_run
    from edgeseg.predict.outputs import overlay, with_legend

    classes = generic_classes(6)  # bit palette 0..5: no greys, so no text pixel can match a swatch
    rng = np.random.default_rng(0)
    label = rng.choice([1, 3, 4], size=(40, 120)).astype(np.uint8)
    label[0, 0] = classes.ignore_index
    image = rng.integers(0, 256, (40, 120, 3), dtype=np.uint8)
    blended = overlay(image, label, classes)
    shown = with_legend(blended, label, classes)
    assert np.array_equal(shown[:40, :120], blended)  # the legend hides no pixel
    strip = shown[40:]
    assert strip.shape[0] > 0
    pixels = strip.reshape(-1, 3)
    for index, colour in enumerate(classes.palette):
        count = int((pixels == colour).all(axis=1).sum())
        if index in (1, 3, 4):
            assert count >= 12 * 12, (index, count)  # a whole swatch of the exact colour
        else:
            assert count == 0, (index, count)
    # the bundle's stand-alone copy draws the same picture
    segmenter = bundle_run.Segmenter.__new__(bundle_run.Segmenter)
    segmenter.classes, segmenter.colours = list(classes.names), classes.colour_lut()
    assert np.array_equal(segmenter.with_legend(blended, label), shown)


def test_legend_of_a_narrow_image_is_widened_not_clipped():
    from edgeseg.predict.outputs import with_legend

    label = np.arange(11, dtype=np.uint8).repeat(3)[None].repeat(8, axis=0)
    shown = with_legend(np.zeros((8, 33, 3), np.uint8), label, CAMVID)
    assert shown.shape[1] > 33 and shown.shape[0] > 11 * 12


def test_curves_and_confusion_are_real_pictures_of_sane_size(tmp_path):
    from edgeseg.plots import class_shares, curves, write_run_pictures
    from edgeseg.data.doctor import DoctorReport, SplitReport

    rows = [{"epoch": str(e), "lr": f"{1e-3 * (1 - e / 6):.6g}", "train_loss": f"{2 / e:.5f}",
             "val_miou": f"{0.1 * e:.5f}" if e % 2 == 0 else ""} for e in range(1, 6)]
    width, height = png_size(curves(rows, "run"))
    assert 800 <= width <= 2000 and 250 <= height <= 800
    assert png_size(curves([]))[0] > 0  # a run killed before its first epoch still draws
    matrix = np.arange(121).reshape(11, 11)
    matrix[6] = 0  # a class absent from the ground truth
    written = write_run_pictures(tmp_path / "run", rows, {"confusion": matrix.tolist()}, CAMVID.names, "best")
    assert [p.name for p in written] == ["curves.png", "confusion.png"]
    width, height = png_size((tmp_path / "run" / "confusion.png").read_bytes())
    assert 500 <= width <= 2500 and 500 <= height <= 2500
    assert not list((tmp_path / "run").glob(".*"))  # atomic writes leave no temporary files
    assert write_run_pictures(tmp_path / "other", rows, None, CAMVID.names)[-1].name == "curves.png"
    with pytest.raises(ValueError, match="shape"):
        write_run_pictures(tmp_path / "bad", rows, {"confusion": [[1, 2], [3, 4]]}, CAMVID.names)

    split = SplitReport("train", 2)
    split.class_pixels[:3] = [10, 30, 60]
    split.class_pixels[255] = 5
    report = DoctorReport("synthetic", ("a", "b", "c"), 255, "void", [split, SplitReport("val", 0)], [])
    assert png_size(class_shares(report))[1] >= 300


def test_data_check_draws_the_class_shares(tmp_path):
    from conftest import run_cli_here as run_cli

    run_cli("data", "check", "synthetic:8", "--plot", str(tmp_path / "shares.png"), "--json",
            str(tmp_path / "d.json"), check=True)
    assert set(json.loads((tmp_path / "d.json").read_text())["splits"]) == {"train", "val", "test"}
    width, height = png_size((tmp_path / "shares.png").read_bytes())
    assert 600 <= width <= 2000 and 300 <= height <= 4000


def test_report_embeds_the_stage_pictures_by_links_that_exist(tmp_path):
    import re

    from edgeseg.pipeline.report import build_report, report_markdown, stage_pictures
    from edgeseg.plots import curves

    names = ["road", "car", "sky"]
    base = {key: 0 for key in ("miou", "pixel_acc", "mean_acc", "sparsity", "params", "macs", "effective_macs",
                               "size_bytes", "gzip_bytes")}
    iou = {name: 0.5 for name in names}
    rows = [{"dir": "01-dense", "kind": "train", "seconds": 1.0,
             "measurements": {**base, "per_class_iou": iou, "confusion": [[5, 1, 0], [0, 3, 1], [0, 0, 9]]}},
            {"dir": "02-fold", "kind": "fold-bn", "seconds": 1.0, "measurements": {**base, "per_class_iou": iou}}]
    out = tmp_path / "pipeline"
    (out / "stages" / "01-dense" / "run").mkdir(parents=True)
    (out / "stages" / "01-dense" / "run" / "curves.png").write_bytes(curves([{"epoch": 1, "train_loss": 1.0}]))
    (out / "stages" / "02-fold" / "old").mkdir(parents=True)  # measured before matrices were recorded
    (out / "stages" / "02-fold" / "old" / "confusion.png").write_bytes(b"\x89PNG")
    latency = {"latency_ms": 1.0, "latency_ms_p90": 1.0, "threads": 1, "size": [8, 8]}
    report = build_report("tiny", rows, {"01-dense": latency, "02-fold": latency}, "val", "edgeseg run x")
    pictures = stage_pictures(out, rows, "val")
    assert pictures == {"01-dense": [("training curves (run)", "stages/01-dense/run/curves.png"),
                                     ("confusion on val", "stages/01-dense/confusion.png")],
                        "02-fold": [("confusion (old)", "stages/02-fold/old/confusion.png")]}
    markdown = report_markdown(report, pictures)
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    assert len(links) == 3 and all((out / link).is_file() for link in links)
    assert png_size((out / "stages" / "01-dense" / "confusion.png").read_bytes())[0] >= 400
    assert "![" not in report_markdown(report)  # no pictures asked for, none shown


def test_the_class_check_names_each_class_that_fell_too_far_below_the_first_stage():
    from edgeseg.pipeline.report import build_report, report_markdown

    base = {key: 0 for key in ("miou", "pixel_acc", "mean_acc", "sparsity", "params", "macs", "effective_macs",
                               "size_bytes", "gzip_bytes")}
    ious = [{"road": 0.90, "car": 0.50, "sky": 0.80, "sign": None},
            {"road": 0.86, "car": 0.30, "sky": None, "sign": 0.10},   # car -20, road -4: only car is named
            {"road": 0.80, "car": 0.49, "sky": 0.72, "sign": 0.00}]   # road -10, then sky -8
    rows = [{"dir": f"0{i + 1}-s", "kind": "train", "seconds": 1.0, "measurements": {**base, "per_class_iou": iou}}
            for i, iou in enumerate(ious)]
    latency = {"latency_ms": 1.0, "latency_ms_p90": 1.0, "threads": 1, "size": [8, 8]}
    report = build_report("tiny", rows, {row["dir"]: latency for row in rows}, "val", "x", max_class_drop=0.05)
    assert list(report["stages"][1]["class_drops"]) == ["car"]
    assert report["stages"][1]["class_drops"]["car"] == pytest.approx(0.20)
    assert report["stages"][2]["class_drops"] == pytest.approx({"road": 0.10, "sky": 0.08})
    markdown = report_markdown(report)
    assert "- 02-s: 1 class(es) fell more than 5.0 points below 01-s: car 50.0 -> 30.0" in markdown
    assert "- 03-s: 2 class(es) fell more than 5.0 points below 01-s: road 90.0 -> 80.0, sky 80.0 -> 72.0" in markdown
    lenient = build_report("tiny", rows, {row["dir"]: latency for row in rows}, "val", "x", max_class_drop=0.25)
    assert "- 02-s: no class fell more than 25.0 points below 01-s" in report_markdown(lenient)


def test_only_drawing_imports_matplotlib():
    import subprocess
    import sys

    code = ("import sys, edgeseg.cli, edgeseg.predict, edgeseg.training.loop, edgeseg.pipeline.runner, "
            "edgeseg.export.bundle_run; print('matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
