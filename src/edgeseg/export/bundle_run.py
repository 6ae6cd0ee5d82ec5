"""Run an edgeseg deploy bundle: segment images, folders or a video with ONNX Runtime.

Needs numpy, onnxruntime and Pillow (OpenCV only for video and cameras); not edgeseg.

    python run.py -i IMAGE_OR_FOLDER [...] [-o output] [--overlay]
    python run.py -i video.mp4 -o output          (needs opencv-python)

Writes output/<name>.png (paletted label maps: pixel value = class id) and, with --overlay,
output/<name>_overlay.png (above a legend of the classes it shows); a video gives
output/<name>_overlay.mp4 at the source frame rate.
The model, classes, palette and pre-processing are read from model.onnx's metadata.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


class Segmenter:
    def __init__(self, model_path: Path, threads: int = 0) -> None:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        if not Path(model_path).is_file():
            raise SystemExit(f"error: {model_path}: model file not found")
        try:
            self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise SystemExit(f"error: {model_path}: not a readable ONNX model ({first_line(err)})") from None
        try:
            meta = {k: decode(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
            self.height, self.width = meta["input_size"]
            self.mean = np.asarray(meta["mean"], np.float32).reshape(3, 1, 1)
            self.std = np.asarray(meta["std"], np.float32).reshape(3, 1, 1)
            self.gray = str(meta.get("input_channels", "rgb")).startswith("gray")
            self.classes = meta["classes"]
            self.palette = meta["label_palette"]
            self.colours = np.asarray(self.palette, np.uint8).reshape(256, 3)
        except (KeyError, ValueError, TypeError) as err:
            raise SystemExit(f"error: {model_path}: not an edgeseg export (metadata: {first_line(err)})") from None

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (1, 3, height, width) float32, normalised and zero-padded."""
        h, w = rgb.shape[:2]
        if h > self.height or w > self.width:
            raise SystemExit(f"error: image {h}x{w} is larger than the model's input {self.height}x{self.width}")
        if self.gray:  # trained on luminance on all 3 channels: PIL's convert('L'), as in training
            rgb = np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=2)
        padded = np.zeros((1, 3, self.height, self.width), np.float32)
        padded[0, :, :h, :w] = (rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0) - self.mean) / self.std
        return padded

    def logits(self, model_input: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": model_input})[0]

    @staticmethod
    def class_ids(logits: np.ndarray, h: int, w: int) -> np.ndarray:
        """(h, w) uint8 ids of the highest of (1, C, H, W) logits, the first on ties, as
        argmax(axis=0); one class at a time is 2x faster than argmax over the strided axis."""
        scores = logits[0, :, :h, :w]
        best, ids, better = scores[0].copy(), np.zeros((h, w), np.uint8), np.empty((h, w), bool)
        for c in range(1, scores.shape[0]):
            np.greater(scores[c], best, out=better)
            np.putmask(ids, better, c)
            np.maximum(best, scores[c], out=best)
        return ids

    def label_image(self, label: np.ndarray) -> Image.Image:
        image = Image.fromarray(label, mode="P")
        image.putpalette(self.palette)
        return image

    def overlay(self, rgb: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        blended = rgb.astype(np.float32) * (1 - alpha) + self.colours[label].astype(np.float32) * alpha
        return blended.round().astype(np.uint8)

    def with_legend(self, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        """``image`` above a legend strip of the classes present in ``label``."""
        present = [i for i in np.flatnonzero(np.bincount(label.ravel(), minlength=256)) if i < len(self.classes)]
        strip = legend_strip(present, self.classes, self.colours, image.shape[1])
        canvas = np.full((image.shape[0] + strip.shape[0], strip.shape[1], 3), 255, np.uint8)
        canvas[:image.shape[0], :image.shape[1]] = image
        canvas[image.shape[0]:] = strip
        return canvas


def legend_strip(ids: list[int], names, colours: np.ndarray, width: int) -> np.ndarray:
    """A white (h, >= width, 3) uint8 strip naming each class in ``ids`` next to a swatch of
    its exact colour ``colours[id]``, in columns as many as fit, so the strip can sit below
    an image of ``width`` pixels without covering any of it.
    (A copy of edgeseg.predict.legend_strip: the bundle runs without edgeseg.)"""
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


def decode(value: str):
    """A metadata value: lists and maps are JSON, other text is kept as it is."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright per EXIF; an unreadable, truncated or oversized
    (decompression bomb) file stops with one line naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        image = ImageOps.exif_transpose(image) or image
        return np.asarray(image.convert("RGB"))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise SystemExit(f"error: {path}: image too large to decode safely (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise SystemExit(f"error: {path}: not a readable image (unknown or corrupt format)") from None
    except Exception as err:  # any decoder failure: a truncated or corrupt file
        raise SystemExit(f"error: {path}: truncated or corrupt image ({first_line(err)})") from None


def in_order(items, prepare, run, finish, workers: int):
    """finish(item, run(prepare(item))) for each item, in order: prepare and finish on
    ``workers`` threads while run (the model) runs here, a few items ahead (0: one after the
    other). An error is raised at its item after the earlier items have finished.
    (A shortened copy of edgeseg.predict.frames.ordered_frames.)"""
    if workers == 0:
        yield from (finish(item, run(prepare(item))) for item in items)
        return
    items, ahead = iter(items), 2 * workers
    with ThreadPoolExecutor(workers) as pool:
        prepared = deque((item, pool.submit(prepare, item)) for item in islice(items, ahead))
        finishing: deque = deque()
        try:
            while prepared:
                item, future = prepared.popleft()
                try:
                    model_input = future.result()
                    prepared.extend((later, pool.submit(prepare, later)) for later in islice(items, 1))
                    output = run(model_input)
                except BaseException:
                    while finishing:
                        yield finishing.popleft().result()
                    raise
                finishing.append(pool.submit(finish, item, output))
                while finishing and (len(finishing) > ahead or finishing[0].done()):
                    yield finishing.popleft().result()
            while finishing:
                yield finishing.popleft().result()
        finally:
            for future in [*(f for _, f in prepared), *finishing]:
                future.cancel()


def write_png(path: Path, image: Image.Image, **options) -> None:
    """Write atomically: a stopped run leaves no half-written file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, path)


def expand(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() or item.isdigit():
            paths.append(path)
        else:
            raise SystemExit(f"error: {item}: file not found")
    return paths


def output_names(images: list[Path]) -> list[str]:
    """Output stems: the image's stem, prefixed with its folder where two stems collide
    (as edgeseg predict names them)."""
    stems = [p.stem for p in images]
    names = [f"{path.parent.name}_{stem}" if stems.count(stem) > 1 else stem for path, stem in zip(images, stems)]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SystemExit(f"error: two inputs would both be written as {dup}.png; run them into separate outputs")
    return names


def run_video(segmenter: Segmenter, source: str, out_dir: Path, workers: int) -> None:
    try:
        import cv2
    except ImportError:
        raise SystemExit("error: video and cameras need OpenCV: pip install opencv-python-headless") from None
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise SystemExit(f"error: {source}: cannot open the video or camera")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    name = f"camera{source}" if source.isdigit() else Path(source).stem
    writer, times = None, []

    def frames():
        ok, frame = capture.read()
        while ok:
            yield frame
            ok, frame = capture.read()

    def prepare(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return rgb, segmenter.model_input(rgb)

    def run(prepared: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        logits = segmenter.logits(prepared[1])
        times.append(1000 * (time.perf_counter() - started))
        return prepared[0], logits

    def finish(_, output: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        rgb, logits = output
        label = segmenter.class_ids(logits, *rgb.shape[:2])
        return cv2.cvtColor(segmenter.overlay(rgb, label), cv2.COLOR_RGB2BGR)

    for drawn in in_order(frames(), prepare, run, finish, workers):
        if writer is None:
            writer = cv2.VideoWriter(str(out_dir / f"{name}_overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                     (drawn.shape[1], drawn.shape[0]))
        writer.write(drawn)
    if writer is not None:
        writer.release()
    capture.release()
    if times:
        print(f"{source}: {len(times)} frames at {fps:.1f} fps, median {sorted(times)[len(times) // 2]:.1f} ms "
              f"per frame; wrote {out_dir / (name + '_overlay.mp4')}")


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Segment images, folders, videos or cameras with this bundle.")
    parser.add_argument("-i", "--input", nargs="+", required=True, help="images, folders, videos or camera indices")
    parser.add_argument("-o", "--output", type=Path, default=Path("output"))
    parser.add_argument("-m", "--model", type=Path, default=here / "model.onnx")
    parser.add_argument("--overlay", action="store_true", help="also write colour overlays")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    parser.add_argument("--workers", type=int, default=2, help="threads that decode and write images while the "
                        "model runs (0: one step after the other; the outputs are the same)")
    args = parser.parse_args()
    segmenter = Segmenter(args.model, args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    paths = expand(args.input)
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES or str(p).isdigit()]
    images = [p for p in paths if p not in videos]
    for video in videos:
        run_video(segmenter, str(video), args.output, args.workers)
    names = dict(zip(images, output_names(images)))

    def prepare(path: Path) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_rgb(path)
        return rgb, segmenter.model_input(rgb)

    def run(prepared: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        started = time.perf_counter()
        logits = segmenter.logits(prepared[1])
        return prepared[0], logits, 1000 * (time.perf_counter() - started)

    def finish(path: Path, output: tuple[np.ndarray, np.ndarray, float]) -> str:
        rgb, logits, ms = output
        label = segmenter.class_ids(logits, *rgb.shape[:2])
        # zlib level 1, as edgeseg predict
        write_png(args.output / f"{names[path]}.png", segmenter.label_image(label), compress_level=1)
        if args.overlay:
            write_png(args.output / f"{names[path]}_overlay.png",
                      Image.fromarray(segmenter.with_legend(segmenter.overlay(rgb, label), label)))
        return f"{path}: {ms:.1f} ms"

    for line in in_order(images, prepare, run, finish, args.workers):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
