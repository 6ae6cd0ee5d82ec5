"""eval and predict end to end through the console, checked against in-process references."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, run_cli_here, write_image
from edgeseg.data.classes import CAMVID
from edgeseg.data.spec import open_dataset
from edgeseg.data.transforms import EvalTransform
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.predict.outputs import overlay


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8).eval()
    with torch.no_grad():  # make predictions varied rather than one class everywhere
        model.classifier.conv.weight.normal_(0, 1.0)
    return save_model_dir(model, model_config_for(model, CAMVID, (64, 96)), tmp_path_factory.mktemp("m") / "model")


def reference_predictions(model_dir, images):
    """Normalise, zero-pad bottom/right to a multiple of 8, run, crop: the documented semantics."""
    from edgeseg.models import load_model_dir

    model = load_model_dir(model_dir).model
    out = []
    with torch.no_grad():
        for image in images:
            x, _ = EvalTransform()(image, np.zeros(image.shape[:2], np.uint8))
            h, w = x.shape[-2:]
            x = torch.nn.functional.pad(x, (0, -w % 8, 0, -h % 8))
            out.append(model(x[None]).argmax(1)[0, :h, :w].numpy())
    return out


def numpy_miou(preds, labels, num_classes):
    ious = []
    for c in range(num_classes):
        tp = fp = fn = 0
        for p, t in zip(preds, labels):
            valid = t != 255
            tp += int(((p == c) & (t == c) & valid).sum())
            fp += int(((p == c) & (t != c) & valid).sum())
            fn += int(((p != c) & (t == c)).sum())
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return sum(ious) / len(ious)


def test_eval_json_matches_independent_computation(model_dir, tmp_path):
    spec = str(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("format: synthetic\nnum_images: 4\nheight: 64\nwidth: 92\n")
    proc = run_cli("eval", str(model_dir), "--data", spec, "--split", "val", "--json", str(tmp_path / "m.json"),
                   "--plot", str(tmp_path / "confusion.png"), "--device", "cpu", check=True)
    assert "mIoU" in proc.stdout
    result = json.loads((tmp_path / "m.json").read_text())
    for key in ("miou", "pixel_acc", "mean_acc", "per_class_iou", "num_images", "split", "model"):
        assert key in result
    assert result["num_images"] == 4 and result["split"] == "val"
    assert set(result["per_class_iou"]) == set(CAMVID.names)
    ds = open_dataset(spec, "val")
    pairs = [ds[i] for i in range(len(ds))]
    preds = reference_predictions(model_dir, [p[0] for p in pairs])  # 92 % 8 != 0: eval must pad
    assert result["miou"] == pytest.approx(numpy_miou(preds, [p[1] for p in pairs], 11), abs=1e-9)
    counted = np.zeros((11, 11), np.int64)  # rows ground truth, columns prediction, void left out
    for pred, (_, truth) in zip(preds, pairs):
        for t in range(11):
            for p in range(11):
                counted[t, p] += int(((truth == t) & (pred == p)).sum())
    assert result["confusion"] == counted.tolist() and counted.sum() == result["valid_pixels"]
    picture = Image.open(tmp_path / "confusion.png")
    assert picture.format == "PNG" and 400 <= picture.size[0] <= 3000 and 400 <= picture.size[1] <= 3000


def test_predict_writes_paletted_labels_for_files_folders_globs_and_lists(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(images):
        write_image(tmp_path / "in" / f"im{i}.png", image)
    (tmp_path / "in" / "list.txt").write_text("im0.png\nim2.png\n")
    expected = reference_predictions(model_dir, images)

    run_cli("predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "a"), "--overlay", check=True)
    for i in range(3):
        written = Image.open(tmp_path / "a" / f"im{i}.png")
        assert written.mode == "P" and written.getpalette()[:6] == [128, 128, 128, 128, 0, 0]
        assert (np.asarray(written) == expected[i]).all()
        shown = Image.open(tmp_path / "a" / f"im{i}_overlay.png")
        assert shown.mode == "RGB" and shown.size[0] >= 56 and shown.size[1] > 40  # the legend strip below
        assert np.array_equal(np.asarray(shown)[:40, :56], overlay(images[i], expected[i].astype(np.uint8), CAMVID))

    run_cli_here("predict", str(model_dir), str(tmp_path / "in" / "im1*.png"), str(tmp_path / "in" / "list.txt"),
            "--out", str(tmp_path / "b"), check=True)
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")) == ["im0.png", "im1.png", "im2.png"]


def test_help_lists_the_commands():
    proc = run_cli_here("--help", check=True)
    for command in ("eval", "predict", "data", "demo"):
        assert command in proc.stdout


def test_demo_runs_the_pipeline_and_prints_the_stage_report(tmp_path):
    """The demo's pipeline with fewer epochs (the full one is `make demo`)."""
    shorter = ("train.epochs=12", "stages.l1.train.epochs=3", "stages.sparse.train.epochs=4")
    proc = run_cli("demo", *shorter, "--out", str(tmp_path / "demo"), check=True)
    assert "label doctor" in proc.stdout and "epoch 12/12" in proc.stdout
    assert "stage report" in proc.stdout and "bicyclist" in proc.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    stages = [s["stage"] for s in report["stages"]]
    assert stages == ["01-dense", "02-l1", "03-threshold", "04-sparse", "05-fold-bn", "06-quantize", "07-export"]
    dense, folded, quantized, exported = (report["stages"][i] for i in (0, 4, 5, 6))
    assert dense["miou"] > 0.25 and folded["sparsity"] > 0.5
    assert quantized["zero_weights"] >= folded["zero_weights"]  # quantization keeps every zero
    assert quantized["precision"].startswith("sim power-of-two w8/a8")
    assert exported["precision"].startswith("int8") and exported["runtime"] == "onnxruntime"
    assert abs(exported["miou"] - quantized["miou"]) < 0.02
    assert all(f"| {name} |" in proc.stdout for name in stages)
    assert (tmp_path / "demo" / "stages" / "07-export" / "bundle" / "run.py").is_file()
    assert len(list((tmp_path / "demo" / "predictions").glob("*_overlay.png"))) == 4


def test_cityscapes_lists_round_trip_through_the_list_format(tmp_path):
    from test_formats import make_cityscapes

    from edgeseg.data.spec import DatasetConfig, ListPair, open_source

    root, _ = make_cityscapes(tmp_path / "cs")
    run_cli_here("data", "lists", "cityscapes", str(root), "--out", str(tmp_path / "lists"), check=True)
    lists = tmp_path / "lists"
    assert sorted(p.name for p in lists.iterdir()) == [
        "train_image_list.txt", "train_label_list.txt", "val_image_list.txt", "val_label_list.txt"]
    config = DatasetConfig(format="list", classes=[f"id{i}" for i in range(34)], splits={
        s: ListPair(images=lists / f"{s}_image_list.txt", labels=lists / f"{s}_label_list.txt") for s in ("train", "val")})
    ds = open_source(config).dataset("val")
    assert ds.samples[0].image.name.endswith("_leftImg8bit.png")
    assert ds[0][1][0, 0] == 7  # raw label id 7 (road), unmapped: the list format keeps raw values
