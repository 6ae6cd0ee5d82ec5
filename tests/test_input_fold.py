"""Pixel scaling folded into the first conv (edgeseg.export.input_fold): the same logits as
the model on normalised images, at the borders too, for every registered architecture."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from conftest import randomize_batchnorm
from edgeseg.data.classes import generic_classes
from edgeseg.data.transforms import Normalize
from edgeseg.export.input_fold import DecodedImageInput, PixelInput
from edgeseg.models import create_model, model_config_for
from edgeseg.models.registry import MODELS
from edgeseg.predict.predictors import TorchPredictor, label_map, model_input

MEAN, STD = (0.3, 0.45, 0.5), (0.2, 0.25, 0.3)


def model_of(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(create_model(arch, 5).eval())


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_pixel_input_gives_the_logits_of_the_normalised_image(arch):
    model = model_of(arch)
    stride = model.output_stride
    pixels = torch.randint(0, 256, (1, 3, 2 * stride, 3 * stride), dtype=torch.uint8)
    folded = PixelInput(model, MEAN, STD, pixels)
    # an image of another size, zero at the borders of the normalised image where the conv pads
    other = torch.randint(0, 256, (1, 3, 3 * stride, 2 * stride), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(Normalize(MEAN, STD).image(other[0])[None])
        got = folded(other)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))
    if arch in ("basic_encdec", "swiftnet", "jacintonet11_seg"):  # the input enters one plain conv only
        assert folded.folded


def test_folding_the_mean_into_the_bias_as_well_would_be_wrong_at_the_borders():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    pixels = torch.randint(0, 256, (1, 3, 8, 10), dtype=torch.uint8)
    folded = PixelInput(conv, MEAN, STD, pixels)
    assert folded.folded
    with torch.no_grad():
        expected = conv(Normalize(MEAN, STD).image(pixels[0])[None])
        assert torch.allclose(folded(pixels), expected, atol=1e-5)
        all_in_bias = folded.model
        all_in_bias.bias -= (all_in_bias.weight * folded.offset).sum(dim=(1, 2, 3))  # the input left unshifted
        wrong = all_in_bias(pixels.float())
    inside = (..., slice(1, -1), slice(1, -1))
    assert torch.allclose(wrong[inside], expected[inside], atol=1e-5)
    assert (wrong - expected).abs().amax(dim=(0, 1))[0].min() > 1e-3  # every pixel of the top row is off


@pytest.mark.parametrize("arch", ["basic_encdec", "swiftnet", "dabnet"])  # dabnet: the scale not folded
def test_decoded_image_model_predicts_what_label_map_predicts(arch, tmp_path):
    model = model_of(arch)
    config = model_config_for(model, generic_classes(5), (40, 56), MEAN, STD)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # not a multiple of the stride: padded
    stride = model.output_stride
    example = torch.randint(0, 256, (1, 3, stride, 2 * stride), dtype=torch.uint8)
    whole = DecodedImageInput(PixelInput(model, MEAN, STD, example), stride, class_ids=True)
    predictor = TorchPredictor(model, config, torch.device("cpu"))
    expected = label_map(predictor, rgb)
    with torch.no_grad():
        got = whole(torch.from_numpy(rgb)[None])[0].numpy()
        logits = DecodedImageInput(whole.pixel_model, stride)(torch.from_numpy(rgb)[None])
    reference = predictor.logits(model_input(predictor, rgb))[..., :37, :53]
    assert (logits - reference).abs().max() <= 1e-4 * max(1.0, float(reference.abs().max()))
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(whole, (torch.from_numpy(rgb)[None],), buffer, input_names=["image"],
                          output_names=["labels"], opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"image": rgb[None]})[0][0], expected)
