"""Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with
gtFine/<split>/<city>/*_gtFine_labelIds.png, mapped to the 19 train ids (255 ignored) or to
caffe-jacinto's 5-class grouping."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.classes import CITYSCAPES, CITYSCAPES_JACINTO5, IGNORE_INDEX
from edgeseg.data.dataset import FileSource, Sample
from edgeseg.data.formats.common import require_dir, with_val_split
from edgeseg.data.imageio import LabelCoding
from edgeseg.errors import DataError

# Cityscapes label id -> train id for the 19 evaluated classes; ids 0..33 not listed are ignored.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34

# caffe-jacinto's 5 classes from the 19 train ids: road; person + rider; traffic light + sign;
# car, truck, bus, train, motorcycle, bicycle; every other train id is background.
TRAIN_ID_TO_JACINTO5 = {0: 1, 11: 2, 12: 2, 6: 3, 7: 3, 13: 4, 14: 4, 15: 4, 16: 4, 17: 4, 18: 4}

IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_id_mapping(label_set: str) -> dict[int, int]:
    """Raw Cityscapes label id -> train id of ``label_set`` ('trainid' or 'jacinto5')."""
    mapping = {}
    for label_id in range(NUM_LABEL_IDS):
        train_id = LABEL_ID_TO_TRAIN_ID.get(label_id, IGNORE_INDEX)
        if label_set == "jacinto5" and train_id != IGNORE_INDEX:
            train_id = TRAIN_ID_TO_JACINTO5.get(train_id, 0)
        mapping[label_id] = train_id
    return mapping


def find_pairs(root: Path, split: str) -> list[Sample]:
    """Every image of ``split`` with the label path it should have (which may be missing)."""
    samples = []
    for image in sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}.png")):
        base = image.name[: -len(IMAGE_SUFFIX + ".png")]
        label = root / "gtFine" / split / image.parent.name / f"{base}{LABEL_SUFFIX}"
        samples.append(Sample(base, image, label))
    return samples


def open_cityscapes(config) -> FileSource:
    """Discover train/val/test of a Cityscapes root."""
    root = require_dir(config.root, "cityscapes")
    if not (root / "leftImg8bit").is_dir():
        raise DataError(f"{root}: not a Cityscapes folder (expected leftImg8bit/ and gtFine/)")
    splits = {s: find_pairs(root, s) for s in ("train", "val", "test") if (root / "leftImg8bit" / s).is_dir()}
    notes: list[str] = []
    splits = with_val_split(splits, config.val_fraction, config.split_seed, notes)
    classes = CITYSCAPES_JACINTO5 if config.label_set == "jacinto5" else CITYSCAPES
    coding = LabelCoding.from_mapping(label_id_mapping(config.label_set))
    return FileSource(f"cityscapes:{root}", classes, coding, splits, notes)
