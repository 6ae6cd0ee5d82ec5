"""caffe-jacinto ImageLabelData lists: a file of 'image label' pairs, or an image list and a
label list matched line by line; one per split (train only -> seeded 9:1 split)."""

from __future__ import annotations

from edgeseg.data.dataset import FileSource
from edgeseg.data.formats.common import read_pair_list, read_two_lists, with_val_split
from edgeseg.data.formats.folder import class_setup
from edgeseg.errors import DataError


def open_list(config) -> FileSource:
    if not config.splits:
        raise DataError("list dataset: no list files given (use list:PAIRS or a YAML with 'splits')")
    splits = {}
    first_list = None
    for split, entry in config.splits.items():
        if hasattr(entry, "images"):
            base = config.root or entry.images.parent
            splits[split] = read_two_lists(entry.images, entry.labels, base)
            first_list = first_list or entry.images
        else:
            base = config.root or entry.parent
            splits[split] = read_pair_list(entry, base)
            first_list = first_list or entry
    notes: list[str] = []
    splits = with_val_split(splits, config.val_fraction, config.split_seed, notes)
    class_root = config.root or first_list.parent
    all_samples = [s for split in splits.values() for s in split]
    classes, coding = class_setup(config, class_root, all_samples, f"list:{first_list}", notes)
    return FileSource(f"list:{first_list}", classes, coding, splits, notes)
