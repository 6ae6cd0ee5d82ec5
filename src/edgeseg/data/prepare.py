"""Dataset preparation from a published archive (DIGITS' prepare_pascal_voc_data.sh).

``prepare_voc``: the PASCAL VOC 2012 trainval tar -> OUT/{train,val}/{images,labels} (the
DIGITS folder layout, read back as ``folder:OUT``) from ImageSets/Segmentation, the label
PNGs copied byte for byte (paletted: 0 background, 1..20, 255 don't care) and classes.txt.
Nothing is extracted by the archive's own paths: each needed member is read and written to a
path built from the split list's image id (a plain name), so no member can land outside OUT.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

from edgeseg.data.classes import VOC
from edgeseg.errors import DataError
from edgeseg.fileio import atomic_replace_dir

# archive name -> its published MD5 (the one torchvision's VOCSegmentation checks)
KNOWN_ARCHIVES = {"VOCtrainval_11-May-2012.tar": "6cd6e144f989b92b3379bac3b3de84fd"}
SPLITS = ("train", "val")
SPLIT_LIST = "ImageSets/Segmentation/{}.txt"
IMAGE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def file_md5(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: Path) -> bool:
    """Check ``path`` against its known MD5 when its name is a known archive's (DataError on a
    mismatch); False when no hash applies."""
    expected = KNOWN_ARCHIVES.get(path.name)
    if expected is None:
        return False
    actual = file_md5(path)
    if actual != expected:
        raise DataError(f"{path}: MD5 {actual} is not the published {expected} of {path.name} (corrupt or "
                        f"incomplete download)")
    return True


def _voc_root(members: dict[str, tarfile.TarInfo], archive: Path) -> str:
    suffix = SPLIT_LIST.format("train")
    roots = sorted(name[:-len(suffix)] for name in members if name.endswith(suffix))
    if not roots:
        raise DataError(f"{archive}: no {suffix} inside (not a VOC segmentation archive)")
    return roots[0]


def _read(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, archive: Path) -> bytes:
    member = members.get(name)
    if member is None or not member.isfile():
        raise DataError(f"{archive}: {name} is missing (or not a regular file)")
    return tar.extractfile(member).read()


def prepare_voc(archive: str | Path, out: str | Path) -> dict:
    """Write the VOC segmentation train/val splits of ``archive`` to ``out`` (replaced
    atomically); returns {'checksum': 'verified' | 'no known hash', split: image count}."""
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"{archive}: file not found")
    verified = verify_archive(archive)
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{archive}: not a readable tar archive ({err})") from None
    counts = {}
    with tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        root = _voc_root(members, archive)

        def build(tmp: Path) -> None:
            for split in SPLITS:
                listing = SPLIT_LIST.format(split)
                text = _read(tar, members, root + listing, archive).decode("utf-8", errors="replace")
                ids = [line.split()[0] for line in text.splitlines() if line.strip()]
                for image_id in ids:
                    if not IMAGE_ID.match(image_id) or image_id in (".", ".."):
                        raise DataError(f"{archive}: {root}{listing}: '{image_id}' is not a plain image name")
                for sub in ("images", "labels"):
                    (tmp / split / sub).mkdir(parents=True)
                for image_id in ids:
                    (tmp / split / "images" / f"{image_id}.jpg").write_bytes(
                        _read(tar, members, f"{root}JPEGImages/{image_id}.jpg", archive))
                    (tmp / split / "labels" / f"{image_id}.png").write_bytes(
                        _read(tar, members, f"{root}SegmentationClass/{image_id}.png", archive))
                counts[split] = len(ids)
            (tmp / "classes.txt").write_text("\n".join(VOC.names) + "\n", encoding="utf-8")

        atomic_replace_dir(build, out)
    return {"checksum": "verified" if verified else "no known hash", **counts}
