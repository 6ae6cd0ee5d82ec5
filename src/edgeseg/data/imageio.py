"""Reading images and label maps, with one-line errors that name the file.

A label file is read in two steps: ``read_label_raw`` returns its raw values (palette
indices, grey levels or RGB colours) and a ``LabelCoding`` maps them to train ids,
refusing values outside the class set rather than silently ignoring them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeseg.data.classes import IGNORE_INDEX
from edgeseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
INVALID = -1
LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000")


def open_image(path: Path) -> Image.Image:
    """Open and decode an image file, turned upright per its EXIF orientation.

    A file that is missing, not an image, truncated, or larger when decoded than Pillow's
    pixel limit (``Image.MAX_IMAGE_PIXELS``: a decompression bomb) is a one-line DataError.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data": the pixels are fine
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
            return upright(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    except PermissionError:
        raise DataError(f"{path}: cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        limit = (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise DataError(f"{path}: image too large to decode safely (over {limit:.0f} megapixels; "
                        f"a decompression bomb?)") from None
    except MemoryError:
        raise DataError(f"{path}: image too large to decode in memory") from None
    except Exception as err:  # any other decoder failure (struct.error, EOFError, ...) is a corrupt file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: truncated or corrupt image ({reason})") from None


def upright(img: Image.Image) -> Image.Image:
    """``img`` rotated/flipped as its EXIF orientation tag says it is shown (a phone's portrait
    JPEG is stored sideways); unchanged without the tag."""
    try:
        if img.getexif().get(0x0112, 1) in (None, 1):
            return img
        turned = ImageOps.exif_transpose(img) or img
        turned.format = img.format
        return turned
    except Exception:  # a corrupt EXIF block: show the pixels as stored
        return img


CHANNELS = ("rgb", "gray", "as_is")
GRAY_MODES = ("L", "1")


def to_channels(img: Image.Image, channels: str = "rgb") -> np.ndarray:
    """An (H, W, 3) uint8 array, as every model takes three channels.

    rgb: converted to RGB. gray: luminance (PIL's convert('L'), ITU-R 601-2) copied to all
    three channels, so the colour is gone. as_is: the file's pixels as stored; a grey file
    stays grey (copied to three channels), only what a model cannot take (palette, alpha,
    CMYK, ...) becomes RGB.
    """
    if channels == "gray":
        return np.repeat(np.asarray(img.convert("L"))[..., None], 3, axis=2)
    if channels == "as_is" and img.mode in GRAY_MODES:
        return np.repeat(np.asarray(img, dtype=np.uint8)[..., None], 3, axis=2) * (255 if img.mode == "1" else 1)
    if channels not in CHANNELS:
        raise DataError(f"channels: '{channels}' is not one of {', '.join(CHANNELS)}")
    return np.array(img if img.mode == "RGB" else img.convert("RGB"))


def read_image(path: str | Path, channels: str = "rgb") -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 array (see ``to_channels``)."""
    return to_channels(open_image(Path(path)), channels)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as shown (EXIF orientation applied), from its header when it
    can; a file that is not a readable image is the DataError ``open_image`` gives."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        return (height, width) if turned else (width, height)
    except Exception:
        return open_image(Path(path)).size


@dataclass(frozen=True)
class RawLabel:
    """A label file as stored: ``values`` (H, W) ints, or ``rgb`` (H, W, 3) colours."""

    mode: str
    values: np.ndarray | None
    rgb: np.ndarray | None
    palette: tuple[int, ...] | None
    lossy: bool = False  # stored with lossy compression (JPEG): values blur between classes at edges

    @property
    def shape(self) -> tuple[int, int]:
        array = self.values if self.values is not None else self.rgb
        return int(array.shape[0]), int(array.shape[1])


def read_label_raw(path: str | Path) -> RawLabel:
    """Decode a label file without interpreting it."""
    img = open_image(Path(path))
    mode, lossy = img.mode, img.format in LOSSY_FORMATS
    if mode in ("P", "L", "1"):
        palette = tuple(img.getpalette() or ()) if mode == "P" else None
        return RawLabel(mode, np.asarray(img, dtype=np.uint8) if mode == "1" else np.asarray(img), None, palette, lossy)
    if mode.startswith("I"):
        return RawLabel(mode, np.asarray(img).astype(np.int64).astype(np.int32), None, None, lossy)
    if mode in ("LA", "PA"):
        return RawLabel(mode, np.asarray(img)[..., 0], None, None, lossy)
    if mode == "F":
        raise DataError(f"{path}: floating-point label image; labels must hold integer class ids")
    try:
        rgb = np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: label image mode {mode} cannot be read as class ids ({err})") from None
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return RawLabel(mode, rgb[..., 0].copy(), None, None, lossy)
    return RawLabel(mode, None, rgb, None, lossy)


def lossy_label_problem(values: np.ndarray, path: Path | str, valid: np.ndarray) -> str:
    """One line describing what lossy compression did to a label map: pixels whose value is
    no class (values between classes) and isolated pixels near edges (a value no 4-neighbour shares)."""
    in_range = (values >= 0) & (values < len(valid))
    strays = int((~in_range | ~valid[np.where(in_range, values, 0)]).sum())
    inner = values[1:-1, 1:-1]
    isolated = int(((inner != values[:-2, 1:-1]) & (inner != values[2:, 1:-1])
                    & (inner != values[1:-1, :-2]) & (inner != values[1:-1, 2:])).sum())
    damage = (f"{strays} pixels hold values that are no class and {isolated} isolated pixels sit near edges"
              if strays or isolated else "no damage found in this one, but JPEG blurs class ids at edges")
    return (f"{path}: lossy (JPEG) label file: {damage}; save labels as PNG "
            f"(or set allow_lossy_labels: true in a dataset YAML)")


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True)
class LabelCoding:
    """How raw label values become train ids (0..C-1, 255 = ignore).

    ``lut[v]`` is the train id of raw value ``v``, ``IGNORE_INDEX`` for void values and
    ``INVALID`` for values that should not occur. ``colours`` (K, 3) with ``colour_values``
    (K,) first turn RGB masks into raw values.
    """

    lut: np.ndarray
    colours: np.ndarray | None = None
    colour_values: np.ndarray | None = None
    allow_lossy: bool = False

    @classmethod
    def identity(cls, num_classes: int, void_values: tuple[int, ...] = (IGNORE_INDEX,)) -> "LabelCoding":
        """Raw value = train id for 0..C-1; ``void_values`` are ignored; anything else is invalid."""
        lut = np.full(256, INVALID, dtype=np.int16)
        lut[:num_classes] = np.arange(num_classes)
        for value in void_values:
            lut[value] = IGNORE_INDEX
        return cls(lut)

    @classmethod
    def from_mapping(cls, mapping: dict[int, int]) -> "LabelCoding":
        """Explicit raw -> train id mapping; values not in ``mapping`` are invalid."""
        lut = np.full(256, INVALID, dtype=np.int16)
        for raw, train_id in mapping.items():
            lut[raw] = train_id
        return cls(lut)

    def with_colours(self, colours: list[tuple[int, int, int]], values: list[int]) -> "LabelCoding":
        """The same coding, also accepting RGB masks whose colour i stands for ``values[i]``."""
        return replace(self, colours=np.asarray(colours, dtype=np.uint8).reshape(-1, 3),
                       colour_values=np.asarray(values, dtype=np.int32))

    def valid_description(self) -> str:
        """Human summary of the accepted raw values, for error messages."""
        valid = np.flatnonzero(self.lut != INVALID)
        return _ranges(valid.tolist())

    def raw_values(self, raw: RawLabel, path: Path | str) -> np.ndarray:
        """(H, W) int32 raw values; RGB masks go through the colour map (unknown colours raise)."""
        if raw.values is not None:
            return raw.values.astype(np.int32, copy=False)
        if self.colours is None:
            raise DataError(f"{path}: RGB colour label image but the dataset has no colour map "
                            f"(give a colormap file with one 'R G B' line per class)")
        keys = _colour_keys(raw.rgb)
        table = _colour_keys(self.colours)
        order = np.argsort(table)
        sorted_table = table[order]
        pos = np.clip(np.searchsorted(sorted_table, keys), 0, len(table) - 1)
        found = sorted_table[pos] == keys
        if not found.all():
            unknown = np.unique(keys[~found])[:5]
            names = ", ".join(f"({k >> 16} {(k >> 8) & 255} {k & 255})" for k in unknown.tolist())
            raise DataError(f"{path}: colours not in the colour map: {names}")
        return self.colour_values[order][pos]

    def to_train_ids(self, raw_values: np.ndarray, path: Path | str) -> np.ndarray:
        """Map raw values to uint8 train ids; raise DataError naming the bad values."""
        in_table = (raw_values >= 0) & (raw_values < 256)
        mapped = self.lut[np.where(in_table, raw_values, 0)]
        bad = ~in_table | (mapped == INVALID)
        if bad.any():
            values = np.unique(raw_values[bad])
            shown = ", ".join(str(v) for v in values[:8].tolist()) + (" ..." if len(values) > 8 else "")
            raise DataError(f"{path}: label values out of range: {shown} "
                            f"(valid: {self.valid_description()})")
        return mapped.astype(np.uint8)

    def decode(self, path: str | Path) -> np.ndarray:
        """Read a label file and return its (H, W) uint8 train-id map."""
        raw = read_label_raw(path)
        values = self.raw_values(raw, path)
        if raw.lossy and not self.allow_lossy:
            raise DataError(lossy_label_problem(values, path, self.lut != INVALID))
        return self.to_train_ids(values, path)


def _ranges(values: list[int]) -> str:
    """[0,1,2,3,11] -> '0-3, 11'."""
    parts: list[str] = []
    start = prev = None
    for v in values + [None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    return ", ".join(parts) or "none"


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
