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
    from edgeseg.predict import overlay, with_legend

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
    from edgeseg.predict import with_legend

    label = np.arange(11, dtype=np.uint8).repeat(3)[None].repeat(8, axis=0)
    shown = with_legend(np.zeros((8, 33, 3), np.uint8), label, CAMVID)
    assert shown.shape[1] > 33 and shown.shape[0] > 11 * 12
