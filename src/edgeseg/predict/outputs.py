"""What prediction writes: paletted label PNGs, overlays with a class legend, and overlay
videos, for the images and videos ``predict.sources`` finds."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from edgeseg.data.classes import ClassInfo
from edgeseg.data.imageio import read_image
from edgeseg.errors import DataError
from edgeseg.fileio import atomic_write_bytes
from edgeseg.predict.frames import DEFAULT_WORKERS, ordered_frames
from edgeseg.predict.predictors import Predictor, labels_from_logits, model_input
from edgeseg.predict.sources import output_names
from edgeseg.runtime import track

LABEL_PNG_LEVEL = 1


def label_png(label: np.ndarray, classes: ClassInfo) -> bytes:
    """A mode-P PNG of a label map with the class palette (value = class id). zlib level 1:
    on CamVid's 360x480 maps 0.6 ms against 2.0 ms at PIL's default 6, for files of ~7 KB
    instead of ~5 KB (a frame's budget matters more than the bytes)."""
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(classes.flat_palette())
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=LABEL_PNG_LEVEL)
    return buffer.getvalue()


def overlay(image: np.ndarray, label: np.ndarray, classes: ClassInfo, alpha: float = 0.5) -> np.ndarray:
    """The image blended with class colours (ignore pixels left as they are)."""
    colours = classes.colour_lut()[label].astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = label == classes.ignore_index
    blended[keep] = image[keep]
    return blended.round().astype(np.uint8)


def legend_strip(ids: list[int], names, colours: np.ndarray, width: int) -> np.ndarray:
    """A white (h, >= width, 3) uint8 strip naming each class in ``ids`` next to a swatch of
    its exact colour ``colours[id]``, in columns as many as fit, so the strip can sit below
    an image of ``width`` pixels without covering any of it.
    (export/bundle_run.py holds a copy: the bundle runs without edgeseg.)"""
    size = max(12, min(28, round(width / 32)))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    pad, swatch, gap = size // 2, size, size // 3
    entries = [(int(i), str(names[i])) for i in ids]
    column = swatch + gap + max([round(font.getlength(name)) for _, name in entries], default=0) + size
    width = max(width, 2 * pad + column)
    columns = max(1, (width - 2 * pad) // column)
    line = swatch + pad
    places = [(pad + (n % columns) * column, pad + (n // columns) * line, entry) for n, entry in enumerate(entries)]
    y = pad + (max(len(entries) - 1, 0) // columns) * line
    strip = Image.new("RGB", (width, y + swatch + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    _, top, _, bottom = font.getbbox("Hg")
    for x, y, (index, name) in places:
        draw.rectangle((x - 1, y - 1, x + swatch, y + swatch), outline=(96, 96, 96))
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=tuple(int(v) for v in colours[index]))
        draw.text((x + swatch + gap, y + (swatch - top - bottom) / 2), name, fill=(20, 20, 20), font=font)
    return np.asarray(strip)


def with_legend(image: np.ndarray, label: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """``image`` (an overlay of ``label``) above a legend strip of the classes present in
    ``label``, in class order; the image's pixels are kept as they are, the rest is white."""
    present = [i for i in np.flatnonzero(np.bincount(label.ravel(), minlength=256)) if i < classes.num_classes]
    strip = legend_strip(present, classes.names, classes.colour_lut(), image.shape[1])
    canvas = np.full((image.shape[0] + strip.shape[0], strip.shape[1], 3), 255, np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = image
    canvas[image.shape[0]:] = strip
    return canvas


@dataclass
class PredictResult:
    image: Path
    label_file: Path
    overlay_file: Path | None
    milliseconds: float


def predict_images(predictor: Predictor, images: list[Path], out_dir: Path, with_overlay: bool = False,
                   workers: int = DEFAULT_WORKERS) -> list[PredictResult]:
    """Write ``<out>/<name>.png`` (paletted labels) and optionally ``<name>_overlay.png``
    (the overlay above a legend of the classes it shows), in input order. ``workers`` threads
    decode and write while the model runs (``predict.frames``; 0: one step after the other);
    the files are the same byte for byte either way. ``milliseconds``: the model's time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = dict(zip(images, output_names(images)))

    def prepare(path: Path) -> tuple[np.ndarray, torch.Tensor]:
        image = read_image(path)
        return image, model_input(predictor, image)

    def run(prepared: tuple[np.ndarray, torch.Tensor]) -> tuple[np.ndarray, torch.Tensor, float]:
        image, tensor = prepared
        start = time.perf_counter()
        logits = predictor.logits(tensor)
        return image, logits, (time.perf_counter() - start) * 1000

    def finish(path: Path, output: tuple[np.ndarray, torch.Tensor, float]) -> PredictResult:
        image, logits, elapsed = output
        label = labels_from_logits(logits, *image.shape[:2])
        label_file = atomic_write_bytes(out_dir / f"{names[path]}.png", label_png(label, predictor.classes))
        overlay_file = None
        if with_overlay:
            buffer = io.BytesIO()
            Image.fromarray(with_legend(overlay(image, label, predictor.classes), label, predictor.classes)).save(
                buffer, format="PNG")
            overlay_file = atomic_write_bytes(out_dir / f"{names[path]}_overlay.png", buffer.getvalue())
        return PredictResult(path, label_file, overlay_file, elapsed)

    with torch.inference_mode():
        return list(track(ordered_frames(images, prepare, run, finish, workers), len(images), "predict"))


@dataclass
class VideoResult:
    source: str
    overlay_file: Path
    frames: int
    fps: float
    milliseconds: list[float]


def predict_video(predictor: Predictor, source: str, out_dir: Path, max_frames: int | None = None,
                  workers: int = DEFAULT_WORKERS) -> VideoResult:
    """Segment every frame of a video file or camera; write ``<out>/<name>_overlay.mp4`` at
    the source's frame rate and time each frame's prediction (as the seeds' scripts do).
    ``workers`` threads normalise frames and draw overlays while the model runs; frames are
    read and written here, in order."""
    import cv2

    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise DataError(f"{source}: cannot open this video or camera")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    name = f"camera{source}" if source.isdigit() else Path(source).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_overlay.mp4"
    partial = target.with_name(f".{target.stem}.partial.mp4")
    writer, times = None, []

    def frames() -> Iterator[np.ndarray]:
        count = 0
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                return
            count += 1
            yield frame

    def prepare(frame: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return rgb, model_input(predictor, rgb)

    def run(prepared: tuple[np.ndarray, torch.Tensor]) -> tuple[np.ndarray, torch.Tensor]:
        started = time.perf_counter()
        logits = predictor.logits(prepared[1])
        times.append((time.perf_counter() - started) * 1000)
        return prepared[0], logits

    def finish(_, output: tuple[np.ndarray, torch.Tensor]) -> np.ndarray:
        rgb, logits = output
        label = labels_from_logits(logits, *rgb.shape[:2])
        return cv2.cvtColor(overlay(rgb, label, predictor.classes), cv2.COLOR_RGB2BGR)

    try:
        with torch.inference_mode():
            for drawn in ordered_frames(frames(), prepare, run, finish, workers):
                if writer is None:
                    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (drawn.shape[1], drawn.shape[0]))
                writer.write(drawn)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not times:
        raise DataError(f"{source}: no frames could be read")
    partial.replace(target)
    return VideoResult(source, target, len(times), fps, times)
