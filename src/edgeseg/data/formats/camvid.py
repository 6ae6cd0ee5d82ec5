"""CamVid in the SegNet layout: list files with a '/SegNet/CamVid/' prefix, or the plain
folder layout (train/ + trainannot/, ...). 11 classes; raw value 11 is void."""

from __future__ import annotations

from edgeseg.data.classes import CAMVID
from edgeseg.data.dataset import FileSource, pair_by_stem
from edgeseg.data.formats.common import read_pair_list, require_dir, with_val_split
from edgeseg.data.imageio import LabelCoding, list_images
from edgeseg.errors import DataError

SEGNET_PREFIX = "/SegNet/CamVid/"
CAMVID_VOID = 11


def open_camvid(config) -> FileSource:
    """Discover train/val/test of a CamVid root; a missing val split becomes a seeded 9:1 split."""
    root = require_dir(config.root, "camvid")
    splits, notes, problems = {}, [], []
    for split in ("train", "val", "test"):
        list_file = root / f"{split}.txt"
        image_dir, label_dir = root / split, root / f"{split}annot"
        if list_file.is_file():
            splits[split] = read_pair_list(list_file, root, SEGNET_PREFIX)
        elif image_dir.is_dir() and label_dir.is_dir():
            samples, lonely_images, lonely_labels = pair_by_stem(list_images(image_dir), list_images(label_dir))
            splits[split] = samples
            problems += [f"{p}: image has no label in {label_dir.name}/" for p in lonely_images]
            problems += [f"{p}: label has no image in {image_dir.name}/" for p in lonely_labels]
    if "train" not in splits and "val" not in splits:
        raise DataError(f"{root}: not a CamVid folder (expected train.txt or train/ with trainannot/)")
    splits = with_val_split(splits, config.val_fraction, config.split_seed, notes)
    void = tuple(config.void_values) if config.void_values is not None else (CAMVID_VOID,)
    coding = LabelCoding.identity(CAMVID.num_classes, void)
    return FileSource(f"camvid:{root}", CAMVID, coding, splits, notes, problems)

