"""What prediction reads: image files, folders, glob patterns, list files, videos and camera
indices, and the output name each input gets."""

from __future__ import annotations

import glob
from pathlib import Path

from edgeseg.data.imageio import IMAGE_SUFFIXES, list_images
from edgeseg.errors import DataError

LIST_SUFFIXES = (".txt", ".lst")


def expand_sources(sources: list[str]) -> list[Path]:
    """Image paths from files, folders (their images, sorted), glob patterns and list files
    (first field of each line; relative paths from the list's folder). Missing -> DataError."""
    images: list[Path] = []
    for source in sources:
        path = Path(source)
        if any(ch in source for ch in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
            matches = [p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise DataError(f"{source}: no images match this pattern")
            images += matches
        elif path.is_dir():
            found = list_images(path)
            if not found:
                raise DataError(f"{path}: folder holds no images")
            images += found
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    entry = Path(line.split()[0])
                    images.append(entry if entry.is_absolute() else path.parent / entry)
        elif path.is_file():
            images.append(path)
        else:
            raise DataError(f"{path}: file not found")
    return images


def output_names(images: list[Path]) -> list[str]:
    """Output stems: the image's stem, prefixed with its folder where two stems collide."""
    stems = [p.stem for p in images]
    names = []
    for path, stem in zip(images, stems):
        names.append(f"{path.parent.name}_{stem}" if stems.count(stem) > 1 else stem)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two inputs would both be written as {dup}.png; predict them into separate --out folders")
    return names


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def is_video_source(source: str) -> bool:
    """A video file (by suffix) or a camera index ('0', '1', ...)."""
    return source.isdigit() or Path(source).suffix.lower() in VIDEO_SUFFIXES
