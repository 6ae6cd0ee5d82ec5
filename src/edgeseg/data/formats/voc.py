"""PASCAL VOC 2012: JPEGImages/, SegmentationClass/ (paletted PNGs: 0 background, 1..20,
255 don't care) and ImageSets/Segmentation/<split>.txt."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.classes import IGNORE_INDEX, VOC
from edgeseg.data.dataset import FileSource, Sample
from edgeseg.data.formats.common import _read_lines, require_dir, with_val_split
from edgeseg.data.imageio import LabelCoding
from edgeseg.errors import DataError


def find_voc_root(root: Path) -> Path:
    """Accept the VOC2012 folder itself, or VOCdevkit/ or its parent."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DataError(f"{root}: not a VOC folder (expected JPEGImages/ and ImageSets/Segmentation/)")


def open_voc(config) -> FileSource:
    root = find_voc_root(require_dir(config.root, "voc"))
    split_dir = root / "ImageSets" / "Segmentation"
    splits = {}
    for list_file in sorted(split_dir.glob("*.txt")):
        ids = [line.split()[0] for _, line in _read_lines(list_file)]
        splits[list_file.stem] = [Sample(i, root / "JPEGImages" / f"{i}.jpg",
                                         root / "SegmentationClass" / f"{i}.png") for i in ids]
    notes: list[str] = []
    splits = with_val_split(splits, config.val_fraction, config.split_seed, notes)
    coding = LabelCoding.identity(VOC.num_classes, (IGNORE_INDEX,)).with_colours(
        [*VOC.palette, VOC.ignore_colour], [*range(VOC.num_classes), IGNORE_INDEX])
    return FileSource(f"voc:{root}", VOC, coding, splits, notes)
