"""The Python API a notebook uses: Segmenter on a model directory, an ONNX file and a bundle,
with numpy and PIL input; edgeseg.train and edgeseg.evaluate as the commands run them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import edgeseg
from conftest import random_image, run_cli_here as run_cli, write_image
from edgeseg import Segmenter
from edgeseg.data.classes import CAMVID
from edgeseg.errors import DataError
from edgeseg.models import create_model, model_config_for, save_model_dir

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8).eval()
    with torch.no_grad():
        model.classifier.conv.weight.normal_(0, 1.0)  # varied predictions rather than one class
    config = model_config_for(model, CAMVID, (64, 96), history=[{"stage": "train", "data": "synthetic:2"}])
    return save_model_dir(model, config, tmp_path_factory.mktemp("m") / "model")


def test_segmenter_predicts_what_edgeseg_predict_writes(model_dir, tmp_path):
    image = random_image(RNG, 60, 90)
    write_image(tmp_path / "in" / "a.png", image)
    run_cli("predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "out"), check=True)
    written = np.array(Image.open(tmp_path / "out" / "a.png"))
    segmenter = Segmenter(model_dir)
    labels = segmenter.predict(image)
    assert labels.dtype == np.uint8 and labels.shape == (60, 90)
    np.testing.assert_array_equal(labels, written)
    np.testing.assert_array_equal(segmenter.predict(Image.fromarray(image)), written)
    np.testing.assert_array_equal(segmenter.predict(tmp_path / "in" / "a.png"), written)
    assert segmenter.classes == list(CAMVID.names)


def test_segmenter_runs_an_onnx_file_and_a_bundle_like_the_model(model_dir, tmp_path):
    run_cli("export", str(model_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--check-images", "1",
            "--size", "64", "96", check=True)
    image = random_image(RNG, 64, 96)
    expected = Segmenter(model_dir, device="cpu").predict(image)
    onnx = Segmenter(tmp_path / "m.onnx")
    assert onnx.predictor.backend == "onnxruntime"
    assert (onnx.predict(image) == expected).mean() > 0.999


def test_overlay_blends_the_class_colours(model_dir):
    segmenter = Segmenter(model_dir)
    image = np.zeros((32, 48, 3), np.uint8)
    labels = np.full((32, 48), 3, np.uint8)
    picture = segmenter.overlay(image, labels, alpha=1.0)
    assert picture.shape[0] >= 32 and tuple(picture[0, 0]) == tuple(CAMVID.palette[3])
    with pytest.raises(DataError, match="do not match"):
        segmenter.overlay(image, labels[:10])


def test_exif_orientation_of_a_pil_image_is_honoured(model_dir):
    segmenter = Segmenter(model_dir)
    image = Image.fromarray(random_image(RNG, 40, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.info["exif"] = exif.tobytes()
    image.getexif()[0x0112] = 6
    assert segmenter.predict(image).shape == (64, 40)


@pytest.mark.parametrize("bad,message", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 5), np.uint8), "(H, W, 3)"),
    (3.5, "cannot read an image from a float"),
])
def test_bad_images_are_one_line_errors(model_dir, bad, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Segmenter(model_dir).predict(bad)


def test_train_and_evaluate_as_the_commands_do(tmp_path):
    run = edgeseg.train({"data": {"spec": "synthetic:8", "num_workers": 0}, "tensorboard": False,
                         "model": {"name": "basic_encdec", "args": {"width": 8}}, "augment": {"crop": [64, 96]},
                         "batch_size": 4},
                        epochs=1, runs_dir=str(tmp_path), name="api", optimizer__lr=0.01)
    assert run.run_dir == tmp_path / "api" and 0 <= run.best_miou <= 1
    assert json.loads(json.dumps(run.best_miou)) == run.best_miou
    metrics = edgeseg.evaluate(run.run_dir / "best", "synthetic:8")
    assert metrics["miou"] == pytest.approx(run.best_miou, abs=1e-6)
    assert {"pixel_acc", "mean_acc", "per_class_iou", "num_images", "split"} <= set(metrics)
    proc = run_cli("eval", str(run.run_dir / "best"), "--data", "synthetic:8", "--json", str(tmp_path / "e.json"),
                   check=True)
    assert proc.returncode == 0
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(metrics["miou"], abs=1e-9)
