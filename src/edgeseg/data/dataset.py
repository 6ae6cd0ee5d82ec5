"""Datasets: what a format discovered (a ``DatasetSource``) and the torch Dataset over one split.

Every dataset yields ``(image, label)``: an (H, W, 3) uint8 RGB array and an (H, W) uint8
train-id map (255 = ignore), passed through an optional joint transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch.utils.data

from edgeseg.data.classes import ClassInfo
from edgeseg.data.imageio import LabelCoding, image_size, read_image
from edgeseg.errors import DataError

Transform = Callable[[np.ndarray, np.ndarray], tuple]


@dataclass(frozen=True)
class Sample:
    """One image and its label file (``label`` is None for unlabelled data)."""

    name: str
    image: Path
    label: Path | None


class SegmentationDataset(torch.utils.data.Dataset):
    """Base: subclasses implement ``__len__``, ``sample_name`` and ``read``."""

    classes: ClassInfo
    split: str
    transform: Transform | None = None

    def __init__(self, classes: ClassInfo, split: str, transform: Transform | None = None,
                 cache: bool = False) -> None:
        self.classes = classes
        self.split = split
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        raise NotImplementedError

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode sample ``index`` to (image uint8 HWC, label uint8 HW) without transforms."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``read`` through the in-memory cache when caching is on."""
        if self._cache is None:
            return self.read(index)
        if index not in self._cache:
            self._cache[index] = self.read(index)
        return self._cache[index]

    def preload(self) -> "SegmentationDataset":
        """Decode every sample into the cache now (before DataLoader workers fork)."""
        if self._cache is None:
            self._cache = {}
        for index in range(len(self)):
            self.load(index)
        return self

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.load(index)
        if self.transform is not None:
            return self.transform(image, label)
        return image, label


class FileDataset(SegmentationDataset):
    """A split of a file-based dataset."""

    def __init__(self, samples: list[Sample], coding: LabelCoding, classes: ClassInfo, split: str,
                 transform: Transform | None = None, cache: bool = False, channels: str = "rgb") -> None:
        super().__init__(classes, split, transform, cache)
        self.samples = samples
        self.coding = coding
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index].name

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        if sample.label is None:
            raise DataError(f"{sample.image}: no label file for this image")
        image = read_image(sample.image, self.channels)
        label = self.coding.decode(sample.label)
        if image.shape[:2] != label.shape:
            raise DataError(f"{sample.label}: label size {label.shape[1]}x{label.shape[0]} differs from "
                            f"image {sample.image.name} size {image.shape[1]}x{image.shape[0]}")
        return image, label


class DatasetSource(Protocol):
    """What a spec resolves to: class metadata and a dataset for each split."""

    spec: str
    classes: ClassInfo

    def split_names(self) -> list[str]: ...

    def dataset(self, split: str, transform: Transform | None = None, cache: bool = False,
                check_files: bool = True) -> SegmentationDataset: ...


@dataclass
class FileSource:
    """A discovered file-based dataset: samples per split plus how to decode labels."""

    spec: str
    classes: ClassInfo
    coding: LabelCoding
    splits: dict[str, list[Sample]]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    group_rule: str | None = None  # regex naming a sample's group (edgeseg.data.groups)
    channels: str = "rgb"  # how images become 3 channels (edgeseg.data.imageio.to_channels)
    same_shape: bool = False  # every image and label of every split must share one size

    def split_names(self) -> list[str]:
        return list(self.splits)

    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split``; ``train+val`` is the two splits' samples, in that order."""
        samples = []
        for part in split_parts(split):
            if part not in self.splits:
                raise DataError(f"{self.spec}: no split '{part}' (available: {', '.join(self.splits) or 'none'})")
            samples += self.splits[part]
        return samples

    def dataset(self, split: str, transform: Transform | None = None, cache: bool = False,
                check_files: bool = True) -> FileDataset:
        """The torch dataset of ``split``; with ``check_files`` every file must exist now."""
        samples = self.samples(split)
        if check_files:
            if self.problems:
                more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
                raise DataError(self.problems[0] + more)
            check_exist(samples)
            if self.same_shape:
                odd = odd_sizes(self.splits)
                if odd:
                    more = f" (and {len(odd) - 1} more odd files)" if len(odd) > 1 else ""
                    raise DataError(odd[0][1] + more)
        return FileDataset(samples, self.coding, self.classes, split, transform, cache, self.channels)


def split_parts(split: str) -> list[str]:
    """The split names of a split expression: ``train+val`` -> [train, val] (each at most once)."""
    parts = [part.strip() for part in split.split("+")]
    if any(not part for part in parts):
        raise DataError(f"split '{split}': an empty split name (join splits as train+val)")
    if len(set(parts)) < len(parts):
        raise DataError(f"split '{split}': a split is named twice")
    return parts


def odd_sizes(splits: dict[str, list[Sample]],
              sizes: dict[Path, tuple[int, int]] | None = None) -> list[tuple[Path, str]]:
    """For ``same_shape: true``: (file, problem line) for each image or label file whose size differs
    from the size most files of the dataset share. ``sizes`` (path -> (width, height)) saves reading
    files again."""
    sizes = dict(sizes or {})
    files = [p for samples in splits.values() for s in samples for p in (s.image, s.label) if p is not None]
    for path in files:
        if path not in sizes and path.is_file():
            try:
                sizes[path] = image_size(path)
            except DataError:  # unreadable: a problem of its own, found where it is read
                continue
    counts: dict[tuple[int, int], int] = {}
    for path in files:
        if path in sizes:
            counts[sizes[path]] = counts.get(sizes[path], 0) + 1
    if len(counts) < 2:
        return []
    common = max(counts, key=counts.get)  # ties: the size seen first
    return [(path, f"{path}: size {sizes[path][0]}x{sizes[path][1]} differs from the dataset's size {common[0]}x{common[1]} "
            f"({counts[common]} files; same_shape: true)")
            for path in files if path in sizes and sizes[path] != common]


def check_exist(samples: list[Sample]) -> None:
    """Raise DataError naming the first missing file (and how many more are missing)."""
    missing = [p for s in samples for p in (s.image, s.label) if p is not None and not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: file not found{more}")


def seeded_split(samples: list[Sample], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Blueoil's rule for a dataset without a validation split: a seeded 9:1 split.

    Deterministic for a given set of sample names, whatever order they were listed in.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    ordered = sorted(samples, key=lambda s: s.name)
    if len(ordered) < 2:
        return ordered, []
    n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(ordered) if i not in val_idx]
    val = [s for i, s in enumerate(ordered) if i in val_idx]
    return train, val


def pair_by_stem(images: list[Path], labels: list[Path], strip_suffixes: tuple[str, ...] = ()) -> tuple[list[Sample], list[Path], list[Path]]:
    """Match images and labels by base name (DIGITS' rule).

    Returns (samples, images without a label, labels without an image). ``strip_suffixes``
    are removed from stems before matching (e.g. '_leftImg8bit').
    """
    def key(path: Path) -> str:
        stem = path.stem
        for suffix in strip_suffixes:
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem

    by_key = {key(p): p for p in labels}
    samples, lonely_images = [], []
    for image in images:
        label = by_key.pop(key(image), None)
        if label is None:
            lonely_images.append(image)
        else:
            samples.append(Sample(key(image), image, label))
    return samples, lonely_images, sorted(by_key.values())
