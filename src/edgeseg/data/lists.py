"""List files as caffe-jacinto's scripts wrote them: one image list and one label list per
split, absolute paths, line i of each describing the same sample."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.formats.cityscapes import find_pairs
from edgeseg.errors import DataError
from edgeseg.fileio import atomic_write_text

LIST_KINDS = ("cityscapes",)


def write_lists(kind: str, root: Path, out_dir: Path) -> list[Path]:
    """Write ``<split>_image_list.txt`` and ``<split>_label_list.txt`` for each split found."""
    if kind not in LIST_KINDS:
        raise DataError(f"data lists: unknown layout '{kind}' (supported: {', '.join(LIST_KINDS)})")
    root = root.resolve()
    if not (root / "leftImg8bit").is_dir():
        raise DataError(f"{root}: not a Cityscapes folder (expected leftImg8bit/ and gtFine/)")
    written = []
    for split in ("train", "val", "test"):
        samples = find_pairs(root, split)
        if not samples:
            continue
        written.append(atomic_write_text(out_dir / f"{split}_image_list.txt", "".join(f"{s.image}\n" for s in samples)))
        written.append(atomic_write_text(out_dir / f"{split}_label_list.txt", "".join(f"{s.label}\n" for s in samples)))
    if not written:
        raise DataError(f"{root}: no images found under leftImg8bit/<split>/<city>/")
    return written
