"""Procedural street scenes labelled with CamVid's 11 classes (and void).

Each image is drawn from its own seeded generator, so any sample can be produced on demand,
in any order, at any size. Classes get perturbed colours and noise textures per image, and
objects follow a perspective layout (sky above buildings and trees, road narrowing towards
a vanishing point, cars on the road, people on the pavement), so colour alone does not
identify a class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgeseg.data.classes import CAMVID, IGNORE_INDEX
from edgeseg.data.dataset import SegmentationDataset, Transform
from edgeseg.errors import DataError

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

BASE_COLOURS = {
    SKY: (150, 180, 215), BUILDING: (140, 110, 95), POLE: (110, 110, 115), ROAD: (85, 85, 90),
    PAVEMENT: (165, 155, 140), TREE: (60, 110, 45), SIGN: (200, 60, 50), FENCE: (120, 100, 70),
    CAR: (40, 60, 140), PEDESTRIAN: (170, 90, 60), BICYCLIST: (60, 150, 160),
}


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, h // cells), max(2, w // cells)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


class Canvas:
    """An image and its label map painted together, shape by shape."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.image = np.zeros((h, w, 3), np.float32)
        self.label = np.full((h, w), IGNORE_INDEX, np.uint8)
        self.texture = _noise(rng, h, w, 6) * 0.6 + _noise(rng, h, w, 24) * 0.4
        self.colours = {c: np.clip(np.array(rgb) + rng.normal(0, 22, 3), 10, 245)
                        for c, rgb in BASE_COLOURS.items()}

    def paint(self, mask: np.ndarray, cls: int, colour=None, texture: float = 25.0) -> None:
        colour = self.colours[cls] if colour is None else np.asarray(colour, np.float32)
        shade = (self.texture[mask] * texture)[:, None]
        self.image[mask] = colour[None, :] + shade
        self.label[mask] = cls

    def rect(self, x0, y0, x1, y1) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return ((self.xx - cx) / max(rx, 0.5)) ** 2 + ((self.yy - cy) / max(ry, 0.5)) ** 2 <= 1.0


def draw_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (H, W, 3) uint8 image and (H, W) uint8 CamVid label map."""
    c = Canvas(rng, h, w)
    horizon = rng.uniform(0.38, 0.5) * h
    vanish_x = rng.uniform(0.35, 0.65) * w
    c.paint(np.ones((h, w), bool), SKY, texture=12)
    c.image += ((c.yy / h) * 40)[..., None]

    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = rng.uniform(0.12, 0.3) * w
        if rng.random() < 0.8:
            top = rng.uniform(0.05, 0.8) * horizon
            colour = c.colours[BUILDING] + rng.normal(0, 25, 3)
            body = c.rect(x, top, x + bw, horizon + 2)
            c.paint(body, BUILDING, colour)
            windows = body & ((c.xx - x) % 12 < 6) & ((c.yy - top) % 14 < 7) & (c.yy > top + 4)
            c.image[windows] *= 0.55
        x += bw + rng.uniform(0, 0.05) * w

    for _ in range(rng.integers(1, 4)):
        tx, ty = rng.uniform(0, w), horizon - rng.uniform(0.05, 0.35) * h
        r = rng.uniform(0.05, 0.12) * w
        crown = np.zeros((h, w), bool)
        for _ in range(5):
            crown |= c.ellipse(tx + rng.normal(0, r / 2), ty + rng.normal(0, r / 3), r * rng.uniform(0.5, 1), r * rng.uniform(0.4, 0.8))
        c.paint(crown | c.rect(tx - r * 0.08, ty, tx + r * 0.08, horizon + 3), TREE, texture=45)

    depth = np.clip(c.yy - horizon, 0, None)
    spread = rng.uniform(0.6, 1.1)
    road = (c.yy > horizon) & (np.abs(c.xx - vanish_x) < depth * spread + 2)
    side_band = (c.yy > horizon) & ~road & (np.abs(c.xx - vanish_x) < depth * (spread + rng.uniform(0.4, 0.9)) + 4)
    c.paint((c.yy > horizon) & ~road & ~side_band, BUILDING, texture=20)
    c.paint(side_band, PAVEMENT, texture=15)
    tiles = side_band & ((c.xx.astype(int) // 7 + c.yy.astype(int) // 5) % 2 == 0)
    c.image[tiles] *= 0.9
    c.paint(road, ROAD, texture=10)
    lane = road & (np.abs(c.xx - vanish_x) < depth * 0.02 + 0.5) & ((c.yy.astype(int) // 8) % 2 == 0)
    c.image[lane] = 230

    fence_side = rng.choice([-1, 1])
    if rng.random() < 0.7:
        band = side_band & (np.sign(c.xx - vanish_x) == fence_side) & (c.yy < horizon + rng.uniform(0.1, 0.25) * h)
        band |= (np.sign(c.xx - vanish_x) == fence_side) & (c.yy > horizon - 0.06 * h) & (c.yy <= horizon) & (
            np.abs(c.xx - vanish_x) > 0.15 * w)
        c.paint(band, FENCE, texture=10)
        c.image[band & (c.xx.astype(int) % 6 < 2)] *= 0.6

    for _ in range(rng.integers(1, 4)):
        side = rng.choice([-1, 1])
        base_y = horizon + rng.uniform(0.15, 0.5) * h
        px = vanish_x + side * (base_y - horizon) * (spread + 0.15)
        height = (base_y - horizon) * rng.uniform(2.0, 3.0)
        width = max(1.5, (base_y - horizon) * 0.03)
        c.paint(c.rect(px - width, base_y - height, px + width, base_y), POLE, texture=8)
        if rng.random() < 0.6:
            s = width * 5
            sign = c.rect(px - s, base_y - height - s * 0.4, px + s, base_y - height + s * 1.2)
            if rng.random() < 0.5:
                sign = c.ellipse(px, base_y - height + s * 0.4, s, s)
            c.paint(sign, SIGN, c.colours[SIGN] + rng.normal(0, 40, 3), texture=5)

    for _ in range(rng.integers(0, 4)):
        base_y = horizon + rng.uniform(0.08, 0.55) * h
        scale = base_y - horizon
        cx = vanish_x + rng.uniform(-0.8, 0.8) * scale * spread
        cw, ch = scale * rng.uniform(0.7, 1.0), scale * rng.uniform(0.35, 0.5)
        colour = c.colours[CAR] if rng.random() < 0.4 else rng.uniform(20, 230, 3)
        body = c.rect(cx - cw / 2, base_y - ch * 0.6, cx + cw / 2, base_y - ch * 0.12)
        cabin = c.rect(cx - cw * 0.3, base_y - ch, cx + cw * 0.3, base_y - ch * 0.55)
        wheels = c.ellipse(cx - cw * 0.3, base_y - ch * 0.12, ch * 0.16, ch * 0.16) | c.ellipse(
            cx + cw * 0.3, base_y - ch * 0.12, ch * 0.16, ch * 0.16)
        c.paint(body | cabin, CAR, colour, texture=12)
        c.image[cabin & (c.yy < base_y - ch * 0.7)] *= 0.5
        c.paint(wheels, CAR, (20, 20, 20), texture=4)

    for cls in (PEDESTRIAN, BICYCLIST):
        for _ in range(rng.integers(0, 3)):
            base_y = horizon + rng.uniform(0.1, 0.5) * h
            scale = base_y - horizon
            side = rng.choice([-1, 1])
            px = vanish_x + side * scale * (spread + rng.uniform(0.05, 0.35))
            if cls == BICYCLIST:
                px = vanish_x + side * scale * spread * rng.uniform(0.6, 0.95)
            ph = scale * rng.uniform(0.5, 0.7)
            body = c.rect(px - ph * 0.1, base_y - ph * 0.8, px + ph * 0.1, base_y)
            head = c.ellipse(px, base_y - ph * 0.88, ph * 0.08, ph * 0.1)
            shape = body | head
            if cls == BICYCLIST:
                r = ph * 0.2
                shape |= c.ellipse(px - r * 1.3, base_y - r, r, r) ^ c.ellipse(px - r * 1.3, base_y - r, r * 0.7, r * 0.7)
                shape |= c.ellipse(px + r * 1.3, base_y - r, r, r) ^ c.ellipse(px + r * 1.3, base_y - r, r * 0.7, r * 0.7)
            c.paint(shape, cls, c.colours[cls] + rng.normal(0, 35, 3), texture=20)

    if rng.random() < 0.5:
        c.label[int(h * rng.uniform(0.93, 0.98)):, :] = IGNORE_INDEX
        c.image[c.label == IGNORE_INDEX] = 25
    c.image *= rng.uniform(0.75, 1.2)
    c.image += rng.normal(0, 4, c.image.shape).astype(np.float32)
    return np.clip(c.image, 0, 255).astype(np.uint8), c.label


class SyntheticDataset(SegmentationDataset):
    """``count`` generated scenes of one split; sample i is the same on every call."""

    def __init__(self, split: str, count: int, height: int, width: int, seed: int,
                 transform: Transform | None = None, cache: bool = False) -> None:
        super().__init__(CAMVID, split, transform, cache)
        self.count, self.height, self.width, self.seed = count, height, width, seed

    def __len__(self) -> int:
        return self.count

    def sample_name(self, index: int) -> str:
        return f"synthetic_{self.split}_{index:05d}"

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        return draw_scene(rng, self.height, self.width)


@dataclass
class SyntheticSource:
    """The ``synthetic[:N]`` spec: N train scenes, N/4 (at least 4) val and test scenes."""

    spec: str
    num_images: int
    height: int
    width: int
    seed: int
    classes = CAMVID

    def split_names(self) -> list[str]:
        return list(SPLIT_CODES)

    def split_size(self, split: str) -> int:
        return self.num_images if split == "train" else max(4, self.num_images // 4)

    def dataset(self, split: str, transform: Transform | None = None, cache: bool = False,
                check_files: bool = True) -> SyntheticDataset:
        if split not in SPLIT_CODES:
            joined = " (splits joined with '+' need a dataset read from files)" if "+" in split else ""
            raise DataError(f"{self.spec}: no split '{split}' (available: {', '.join(SPLIT_CODES)}){joined}")
        return SyntheticDataset(split, self.split_size(split), self.height, self.width, self.seed,
                                transform, cache)


def open_synthetic(config) -> SyntheticSource:
    spec = "synthetic" if config.num_images == 64 else f"synthetic:{config.num_images}"
    return SyntheticSource(spec, config.num_images, config.height, config.width, config.seed)
