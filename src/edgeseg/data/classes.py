"""Class metadata (names, palette, ignore index) and the standard palettes.

Inside edgeseg every label map uses train ids 0..C-1 and one ignore index, 255; each
format's loader maps its raw values onto that (CamVid's 11, Cityscapes' non-train ids,
VOC's 255 all become 255).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ClassInfo:
    """Names and colours of a dataset's classes; ``ignore_index`` pixels count for nothing."""

    names: tuple[str, ...]
    palette: tuple[Colour, ...]
    ignore_index: int = IGNORE_INDEX
    ignore_name: str = "void"
    ignore_colour: Colour = (0, 0, 0)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"{len(self.names)} class names but {len(self.palette)} palette colours")
        if not 0 < len(self.names) <= IGNORE_INDEX:
            raise ValueError(f"between 1 and {IGNORE_INDEX} classes are supported, got {len(self.names)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def flat_palette(self) -> list[int]:
        """768 values for a mode-P PNG: class colours, black elsewhere, ignore colour at 255."""
        flat = [0] * 768
        for index, colour in enumerate(self.palette):
            flat[3 * index : 3 * index + 3] = colour
        flat[3 * self.ignore_index : 3 * self.ignore_index + 3] = self.ignore_colour
        return flat

    def colour_lut(self) -> np.ndarray:
        """A (256, 3) uint8 table from train id (or ignore) to RGB."""
        return np.asarray(self.flat_palette(), dtype=np.uint8).reshape(256, 3)

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "ignore_name": self.ignore_name,
        }

    @classmethod
    def from_json(cls, data: dict) -> "ClassInfo":
        return cls(
            names=tuple(data["names"]),
            palette=tuple(tuple(int(v) for v in c) for c in data["palette"]),
            ignore_index=int(data.get("ignore_index", IGNORE_INDEX)),
            ignore_name=str(data.get("ignore_name", "void")),
        )


def bit_palette(n: int = 256) -> list[Colour]:
    """The PASCAL VOC palette: the bits of the index spread over R, G, B (1 -> (128, 0, 0))."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


def generic_classes(num_classes: int, names: list[str] | None = None) -> ClassInfo:
    """Classes named ``class_0..`` (or ``names``) coloured with the bit palette."""
    names = names or [f"class_{i}" for i in range(num_classes)]
    return ClassInfo(names=tuple(names), palette=tuple(bit_palette(len(names))))


CAMVID = ClassInfo(
    names=("sky", "building", "pole", "road", "pavement", "tree",
           "sign", "fence", "car", "pedestrian", "bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
             (0, 128, 192)),
    ignore_name="void",
)

CITYSCAPES = ClassInfo(
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
           "bus", "train", "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
             (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
             (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_name="void",
)

CITYSCAPES_JACINTO5 = ClassInfo(
    names=("background", "road", "person", "road sign", "vehicle"),
    palette=((0, 0, 0), (128, 64, 128), (220, 20, 60), (220, 220, 0), (0, 0, 142)),
    ignore_name="void",
    ignore_colour=(255, 255, 255),
)

VOC = ClassInfo(
    names=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor"),
    palette=tuple(bit_palette(21)),
    ignore_name="void",
    ignore_colour=(224, 224, 192),
)
