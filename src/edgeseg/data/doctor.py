"""The label doctor: reads every sample of a dataset and reports class shares, suggested
class weights and every problem it finds (missing, unreadable or truncated files, size
mismatches, label values outside the class set, unknown mask colours, inconsistent
palettes, lossy JPEG label files), naming the file each time."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgeseg.data.dataset import FileDataset, Sample, SegmentationDataset, odd_sizes
from edgeseg.data.groups import GroupOverlap, group_overlap
from edgeseg.data.imageio import INVALID, lossy_label_problem, open_image, read_label_raw
from edgeseg.errors import DataError
from edgeseg.runtime import track

ENET_C = 1.02
LOSSY_ALLOWED = "allowed: "  # marks a lossy-label finding the dataset accepts: a warning, not a problem


@dataclass
class SplitReport:
    split: str
    num_images: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    images_with_class: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    pixels_of_images_with_class: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_counts(self, counts: np.ndarray) -> None:
        present = counts > 0
        self.class_pixels += counts
        self.images_with_class += present
        self.pixels_of_images_with_class += present * int(counts.sum())


@dataclass
class DoctorReport:
    spec: str
    class_names: tuple[str, ...]
    ignore_index: int
    ignore_name: str
    splits: list[SplitReport]
    notes: list[str]
    groups: GroupOverlap | None = None

    @property
    def clean(self) -> bool:
        return not any(s.problems for s in self.splits)


def _inspect_file_sample(dataset: FileDataset, sample: Sample, sizes: dict) -> tuple[np.ndarray | None, list[str], tuple | None]:
    """(train-id pixel counts, problems, palette) of one file sample; the (width, height) of
    its readable files go into ``sizes``."""
    problems = []
    image_size = None
    try:
        image_size = sizes[sample.image] = open_image(sample.image).size
    except DataError as err:
        problems.append(str(err))
    if sample.label is None:
        return None, problems + [f"{sample.image}: no label file for this image"], None
    try:
        raw = read_label_raw(sample.label)
    except DataError as err:
        return None, problems + [str(err)], None
    h, w = raw.shape
    sizes[sample.label] = (w, h)
    if image_size is not None and image_size != (w, h):
        problems.append(f"{sample.label}: label size {w}x{h} differs from image {sample.image.name} "
                        f"size {image_size[0]}x{image_size[1]}")
    try:
        values = dataset.coding.raw_values(raw, sample.label)
    except DataError as err:
        return None, problems + [str(err)], raw.palette
    if raw.lossy:  # its stray values are JPEG's doing: say that instead of listing them
        lossy = lossy_label_problem(values, sample.label, dataset.coding.lut != INVALID)
        if not dataset.coding.allow_lossy:
            return None, problems + [lossy], raw.palette
        problems.append(LOSSY_ALLOWED + lossy)
    try:
        train_ids = dataset.coding.to_train_ids(values, sample.label)
    except DataError as err:
        return None, problems + [str(err)], raw.palette
    return np.bincount(train_ids.ravel(), minlength=256), problems, raw.palette


def _inspect_generated(dataset: SegmentationDataset, index: int):
    try:
        image, label = dataset.read(index)
    except DataError as err:
        return None, [str(err)], None
    return np.bincount(label.ravel(), minlength=256), [], None


class PaletteCheck:
    """Remembers the first paletted label seen (across all splits) and flags later ones
    whose class colours differ: the same class would be shown in two colours."""

    def __init__(self, num_classes: int) -> None:
        self.size = 3 * num_classes
        self.first: tuple | None = None
        self.first_name = ""

    def see(self, name: str, palette: tuple) -> str | None:
        if self.first is None:
            self.first, self.first_name = palette, name
            return None
        a, b = palette[:self.size], self.first[:self.size]
        if a == b:
            return None
        index = next((i // 3 for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)) // 3)
        return (f"{name}: palette differs from {self.first_name} (class {index}: {tuple(a[3 * index:3 * index + 3])} "
                f"vs {tuple(b[3 * index:3 * index + 3])}); the same class is shown in two colours")


def check_split(dataset: SegmentationDataset, palettes: PaletteCheck, threads: int = 2,
                sizes: dict | None = None) -> SplitReport:
    """Inspect every sample of one split (file sizes seen go into ``sizes``)."""
    sizes = {} if sizes is None else sizes
    report = SplitReport(dataset.split, len(dataset))
    if isinstance(dataset, FileDataset):
        missing = [p for s in dataset.samples for p in (s.image, s.label) if p is not None and not p.is_file()]
        report.problems += [f"{p}: file not found" for p in missing]
        missing_set = set(missing)
        samples = [s for s in dataset.samples if s.image not in missing_set and s.label not in missing_set]
        with ThreadPoolExecutor(threads) as pool:
            results = list(track(pool.map(lambda s: _inspect_file_sample(dataset, s, sizes), samples), len(samples),
                                 f"checking {dataset.split}"))
        names = [str(s.label) for s in samples]
    else:
        results = [_inspect_generated(dataset, i) for i in range(len(dataset))]
        names = [dataset.sample_name(i) for i in range(len(dataset))]
    for name, (counts, problems, palette) in zip(names, results):
        report.warnings += [p.removeprefix(LOSSY_ALLOWED) for p in problems if p.startswith(LOSSY_ALLOWED)]
        report.problems += [p for p in problems if not p.startswith(LOSSY_ALLOWED)]
        if counts is not None:
            report.add_counts(counts)
        issue = palettes.see(name, palette) if palette else None
        if issue:
            report.problems.append(issue)
    for index, cls in enumerate(dataset.classes.names):
        if report.class_pixels[index] == 0 and report.num_images:
            report.warnings.append(f"class '{cls}' ({index}) has no pixels in split '{dataset.split}'")
    return report


def check_dataset(source, splits: list[str] | None = None) -> DoctorReport:
    """Run the doctor over ``splits`` (default: all) of a DatasetSource."""
    names = splits or source.split_names()
    reports = []
    problems_before = list(getattr(source, "problems", []))
    palettes = PaletteCheck(source.classes.num_classes)
    sizes: dict = {}
    for split in names:
        reports.append(check_split(source.dataset(split, check_files=False), palettes, sizes=sizes))
    if problems_before and reports:
        reports[0].problems[:0] = problems_before
    if getattr(source, "same_shape", False):
        odd = dict(odd_sizes({split: source.splits[split] for split in names}, sizes))
        for report in reports:
            files = [p for smp in source.splits[report.split] for p in (smp.image, smp.label) if p in odd]
            report.problems += [odd.pop(p) for p in files if p in odd]
    classes = source.classes
    return DoctorReport(source.spec, classes.names, classes.ignore_index, classes.ignore_name, reports,
                        list(getattr(source, "notes", [])), train_val_overlap(source))


def train_val_overlap(source) -> GroupOverlap | None:
    """How many val images share a group (sequence) with train images, for a source whose
    samples have groups (``group_by``, or the format's own rule) and both splits."""
    rule = getattr(source, "group_rule", None)
    splits = getattr(source, "splits", {})
    if rule is None or "train" not in splits or "val" not in splits:
        return None
    return group_overlap(splits["train"], splits["val"], rule)


def class_weights(report: SplitReport, num_classes: int) -> dict[str, list[float | None]]:
    """Suggested loss weights from pixel counts (ignore pixels excluded).

    median_frequency (Eigen & Fergus): freq_c = pixels of c / pixels of images containing c;
    w_c = median(freq) / freq_c. enet (Paszke et al.): w_c = 1 / ln(1.02 + p_c) with p_c the
    share of c among valid pixels. Classes without pixels get None.
    """
    counts = report.class_pixels[:num_classes].astype(np.float64)
    image_pixels = report.pixels_of_images_with_class[:num_classes].astype(np.float64)
    present = counts > 0
    freq = np.where(present, counts / np.maximum(image_pixels, 1), np.nan)
    median = float(np.nanmedian(freq)) if present.any() else math.nan
    share = counts / max(counts.sum(), 1)
    median_freq = [median / f if p else None for f, p in zip(freq, present)]
    enet = [1.0 / math.log(ENET_C + s) if p else None for s, p in zip(share, present)]
    return {"median_frequency": median_freq, "enet": enet}

