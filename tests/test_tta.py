"""Test-time augmentation: averaged softmax over flipped and rescaled views, checked on a
model that is flip-equivariant by construction and against a hand-written average."""

import json

import numpy as np
from PIL import Image

import pytest
import torch
import torch.nn.functional as F

from conftest import error_line, randomize_batchnorm, run_cli_here, write_image
from edgeseg.data.classes import CAMVID
from edgeseg.errors import ConfigError
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.predict.predictors import TorchPredictor
from edgeseg.predict.tta import TTAPredictor, TTASpec, parse_tta


def conv_model(symmetric: bool) -> torch.nn.Module:
    """Conv 3x3 (+ReLU) then 1x1 to 11 classes; with ``symmetric`` the 3x3 kernels are mirror
    images of themselves, so (zero padding being symmetric too) model(flip(x)) == flip(model(x))."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 11, 1))
    if symmetric:
        with torch.no_grad():
            model[0].weight.copy_((model[0].weight + model[0].weight.flip(-1)) / 2)
    return model.eval()


def predictor_for(model: torch.nn.Module) -> TorchPredictor:
    config = model_config_for(create_model("basic_encdec", 11, width=4), CAMVID, (32, 48))
    return TorchPredictor(model, config.model_copy(update={"output_stride": 1}), torch.device("cpu"))


def test_parse_tta_options():
    assert parse_tta("flip") == TTASpec(True, (1.0,))
    assert parse_tta("flip,0.75,1.25") == TTASpec(True, (1.0, 0.75, 1.25)) and parse_tta("flip,0.75,1.25").views == 6
    assert parse_tta("0.5, 1") == TTASpec(False, (1.0, 0.5))
    for text, message in [("flop", "'flop' is neither 'flip' nor a scale"), ("flip,0", "scale 0 must lie in"),
                          ("1", "adds no view")]:
        with pytest.raises(ConfigError, match=message):
            parse_tta(text)


def test_flip_tta_of_a_flip_equivariant_model_is_its_own_prediction():
    images = torch.randn(2, 3, 32, 48)
    for symmetric in (True, False):
        model = conv_model(symmetric)
        plain = model(images).softmax(1).detach()
        tta = TTAPredictor(predictor_for(model), parse_tta("flip")).probabilities(images)
        assert torch.allclose(tta, plain, atol=1e-6) == symmetric  # a lopsided kernel sees a mirror differently


def test_flip_and_scale_tta_is_the_average_of_the_views_probabilities():
    model, images = conv_model(symmetric=False), torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        small = F.interpolate(images, size=(16, 24), mode="bilinear", align_corners=False)
        views = [model(images), model(images.flip(-1)).flip(-1), model(small), model(small.flip(-1)).flip(-1)]
        views[2:] = [F.interpolate(v, size=(32, 48), mode="bilinear", align_corners=False) for v in views[2:]]
        expected = sum(v.softmax(1) for v in views) / 4
    tta = TTAPredictor(predictor_for(model), parse_tta("flip,0.5"))
    torch.testing.assert_close(tta.probabilities(images), expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(tta.labels(images), expected.argmax(1))
    assert torch.equal(tta.logits(images).argmax(1), expected.argmax(1))


def test_eval_predict_and_bench_take_tta(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("basic_encdec", 11, width=4)).eval()
    with torch.no_grad():  # weights that predict several classes, so wrong views show
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    save_model_dir(model, model_config_for(model, CAMVID, (64, 96)), tmp_path / "m")
    run_cli_here("eval", str(tmp_path / "m"), "--data", "synthetic:4", "--tta", "flip", "--json",
                 str(tmp_path / "e.json"), check=True)
    assert json.loads((tmp_path / "e.json").read_text())["tta"] == "flip"
    proc = run_cli_here("bench", str(tmp_path / "m"), "--tta", "flip,0.5", "--runs", "2", "--size", "64", "96",
                        "--json", str(tmp_path / "b.json"), check=True)
    timed = json.loads((tmp_path / "b.json").read_text())["models"]
    assert set(timed) == {str(tmp_path / "m"), f"{tmp_path / 'm'} +tta"}
    assert timed[f"{tmp_path / 'm'} +tta"]["backend"] == "pytorch tta flip,0.5" and "+tta" in proc.stdout
    rgb = np.random.default_rng(0).integers(0, 256, (38, 50, 3)).astype(np.uint8)  # not a multiple of the stride
    image = write_image(tmp_path / "in" / "a.png", rgb)
    run_cli_here("predict", str(tmp_path / "m"), str(image), "--out", str(tmp_path / "p"), "--tta", "flip,1.5",
                 check=True)
    config = model_config_for(model, CAMVID, (64, 96))
    tta = TTAPredictor(TorchPredictor(model, config, torch.device("cpu")), parse_tta("flip,1.5"))
    normalised = tta.normalize.image(torch.from_numpy(rgb).permute(2, 0, 1))[None]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "a.png")), tta.labels(normalised)[0].numpy())
    assert "'flop' is neither" in error_line(run_cli_here("eval", str(tmp_path / "m"), "--data", "synthetic:4",
                                                          "--tta", "flop"))
