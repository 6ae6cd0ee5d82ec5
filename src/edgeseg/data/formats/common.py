"""Helpers shared by the format loaders: list files, class files, colour maps, inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.data.classes import IGNORE_INDEX, ClassInfo, bit_palette
from edgeseg.data.dataset import Sample, seeded_split
from edgeseg.data.imageio import read_label_raw
from edgeseg.errors import DataError


def require_dir(path: Path | None, what: str) -> Path:
    if path is None:
        raise DataError(f"{what}: no dataset root given")
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder not found")
    return path


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def map_path(text: str, base: Path, prefix: str | None = None) -> Path:
    """A path from a list file: ``prefix`` (e.g. '/SegNet/CamVid/') is mapped onto ``base``,
    relative paths are taken from ``base``, other absolute paths are kept."""
    if prefix and text.startswith(prefix):
        return base / text[len(prefix):]
    path = Path(text)
    return path if path.is_absolute() else base / path


def read_pair_list(path: Path, base: Path, prefix: str | None = None) -> list[Sample]:
    """'image label' per line (caffe-jacinto / SegNet list files)."""
    samples = []
    for number, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'IMAGE LABEL', got {len(parts)} fields")
        image = map_path(parts[0], base, prefix)
        samples.append(Sample(image.stem, image, map_path(parts[1], base, prefix)))
    return samples


def read_two_lists(images: Path, labels: Path, base: Path) -> list[Sample]:
    """An image list and a label list of equal length, matched line by line."""
    image_lines = _read_lines(images)
    label_lines = _read_lines(labels)
    if len(image_lines) != len(label_lines):
        raise DataError(f"{labels}: {len(label_lines)} labels listed but {images.name} lists "
                        f"{len(image_lines)} images")
    return [Sample(map_path(i, base).stem, map_path(i, base), map_path(l, base))
            for (_, i), (_, l) in zip(image_lines, label_lines)]


def read_class_names(path: Path) -> list[str]:
    """A class-labels file: line i names class i (DIGITS)."""
    names = [line for _, line in _read_lines(path)]
    if not names:
        raise DataError(f"{path}: no class names in file")
    return names


def read_colormap(path: Path) -> list[tuple[int, int, int]]:
    """'R G B' per line, line i the colour of class i."""
    colours = []
    for number, line in _read_lines(path):
        parts = line.replace(",", " ").split()
        try:
            values = [int(v) for v in parts[:3]]
        except ValueError:
            values = []
        if len(values) != 3 or not all(0 <= v <= 255 for v in values):
            raise DataError(f"{path}:{number}: expected 'R G B' with values 0..255, got '{line}'")
        colours.append((values[0], values[1], values[2]))
    if not colours:
        raise DataError(f"{path}: no colours in file")
    return colours


def infer_num_classes(samples: list[Sample], void_values: list[int], limit: int = 200,
                      notes: list[str] | None = None) -> int:
    """Largest non-void raw value + 1 over (up to ``limit``) label files. Values that leave a
    gap (0-2 and 9: a stray 9 would add classes 3-9) are explained in ``notes``; a value
    above 254 is an error."""
    seen: dict[int, Path] = {}
    for sample in samples[:limit]:
        if sample.label is None or not sample.label.is_file():
            continue
        raw = read_label_raw(sample.label)
        if raw.values is None:
            raise DataError(f"{sample.label}: RGB colour labels need a colormap file to define the classes")
        values = np.unique(raw.values)
        for value in values[~np.isin(values, void_values)].tolist():
            seen.setdefault(int(value), sample.label)
    if not seen:
        raise DataError("cannot infer the classes: no labelled pixels found (give a classes file)")
    highest = max(seen)
    if highest >= IGNORE_INDEX:
        raise DataError(f"{seen[highest]}: label value {highest} cannot be a class id (at most {IGNORE_INDEX - 1}); "
                        f"give classes.txt and void_values, or save labels as 8-bit class ids")
    missing = sorted(set(range(highest + 1)) - set(seen))
    if missing and notes is not None:
        notes.append(f"classes inferred from label values as 0-{highest}, but values "
                     f"{_span(missing)} never occur: {highest} (first in {seen[highest]}) may be a stray value "
                     f"that adds classes; give classes.txt to fix the class list")
    return highest + 1


def _span(values: list[int]) -> str:
    return f"{values[0]}-{values[-1]}" if len(values) > 2 and values[-1] - values[0] == len(values) - 1 else \
        ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")


def build_classes(names: list[str] | None, colours: list[tuple[int, int, int]] | None,
                  num_classes: int | None, where: str) -> ClassInfo:
    """ClassInfo from whatever is known: names, colour map and/or a class count."""
    count = len(names) if names else len(colours) if colours else num_classes
    if count is None:
        raise DataError(f"{where}: cannot tell the classes (give classes.txt or a colormap file)")
    if names and colours and len(colours) < len(names):
        raise DataError(f"{where}: colour map has {len(colours)} colours for {len(names)} classes")
    names = names or [f"class_{i}" for i in range(count)]
    palette = (colours or bit_palette(count))[:count]
    return ClassInfo(names=tuple(names), palette=tuple(tuple(c) for c in palette))


def with_val_split(splits: dict[str, list[Sample]], val_fraction: float, seed: int,
                   notes: list[str]) -> dict[str, list[Sample]]:
    """Add a seeded 9:1 val split when there is a train split but no val split."""
    if "train" in splits and "val" not in splits:
        train, val = seeded_split(splits["train"], val_fraction, seed)
        notes.append(f"no val split: held out {len(val)} of {len(splits['train'])} train images "
                     f"(fraction {val_fraction}, seed {seed})")
        splits = {**splits, "train": train, "val": val}
    return splits
