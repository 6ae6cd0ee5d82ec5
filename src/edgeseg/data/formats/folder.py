"""DIGITS-style folders: images/ and labels/ matched by base name, either directly under the
root (split 9:1) or under one folder per split (train/images, val/images, ...). Labels may be
index PNGs, paletted PNGs or RGB colour masks (with a colour map: one 'R G B' line per class).
Optional classes.txt and colormap.txt in the root."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeseg.data.dataset import FileSource, pair_by_stem
from edgeseg.data.formats.common import (build_classes, infer_num_classes, read_class_names,
                                         read_colormap, require_dir, with_val_split)
from edgeseg.data.imageio import IGNORE_INDEX, LabelCoding, list_images, read_label_raw
from edgeseg.errors import DataError

LABEL_DIR_NAMES = ("labels", "masks", "annotations")


def _label_dir(folder: Path) -> Path | None:
    return next((folder / n for n in LABEL_DIR_NAMES if (folder / n).is_dir()), None)


def find_split_folders(root: Path) -> dict[str, Path]:
    """split name -> folder holding images/ and labels/."""
    if (root / "images").is_dir() and _label_dir(root):
        return {"train": root}
    return {p.name: p for p in sorted(root.iterdir())
            if p.is_dir() and (p / "images").is_dir() and _label_dir(p)}


def class_setup(config, root: Path, samples, where: str, notes: list[str] | None = None):
    """(ClassInfo, LabelCoding) from config keys, classes.txt / colormap.txt, or the labels
    (a doubtful inference is explained in ``notes``)."""
    names = None
    if isinstance(config.classes, list):
        names = config.classes
    elif isinstance(config.classes, Path):
        names = read_class_names(config.classes)
    elif (root / "classes.txt").is_file():
        names = read_class_names(root / "classes.txt")
    colormap_file = config.colormap or next(
        (root / n for n in ("colormap.txt", "colors.txt", "colours.txt") if (root / n).is_file()), None)
    colours = read_colormap(colormap_file) if colormap_file else config.palette
    void = list(config.void_values) if config.void_values is not None else [IGNORE_INDEX]
    count = None if (names or colours) else infer_num_classes(samples, void, notes=notes)
    classes = build_classes(names, colours, count, where)
    if not colormap_file and not config.palette:
        classes = _palette_from_labels(classes, samples)
    coding = replace(LabelCoding.identity(classes.num_classes, tuple(void)), allow_lossy=config.allow_lossy_labels)
    if colormap_file:
        voids = [tuple(c) for c in config.void_colours]
        coding = coding.with_colours([*classes.palette, *voids],
                                     [*range(classes.num_classes), *[IGNORE_INDEX] * len(voids)])
    return classes, coding


def _palette_from_labels(classes, samples):
    """Use the palette stored in the first paletted label file, when there is one."""
    for sample in samples[:1]:
        if sample.label is not None and sample.label.is_file():
            raw = read_label_raw(sample.label)
            if raw.palette and len(raw.palette) >= 3 * classes.num_classes:
                p = raw.palette
                palette = tuple((p[3 * i], p[3 * i + 1], p[3 * i + 2]) for i in range(classes.num_classes))
                return type(classes)(classes.names, palette, classes.ignore_index, classes.ignore_name)
    return classes


def open_folder(config) -> FileSource:
    root = require_dir(config.root, "folder")
    folders = find_split_folders(root)
    if not folders:
        raise DataError(f"{root}: expected images/ and labels/ (or train/images, train/labels, ...)")
    splits, problems = {}, []
    for split, folder in folders.items():
        label_dir = _label_dir(folder)
        samples, lonely_images, lonely_labels = pair_by_stem(list_images(folder / "images"), list_images(label_dir))
        splits[split] = samples
        problems += [f"{p}: image has no label of the same name in {label_dir}" for p in lonely_images]
        problems += [f"{p}: label has no image of the same name in {folder / 'images'}" for p in lonely_labels]
    notes: list[str] = []
    splits = with_val_split(splits, config.val_fraction, config.split_seed, notes)
    all_samples = [s for split in splits.values() for s in split]
    classes, coding = class_setup(config, root, all_samples, f"folder:{root}", notes)
    return FileSource(f"folder:{root}", classes, coding, splits, notes, problems)
