"""Where a frame's time goes end to end (decode, normalise, model, class ids, PNG encode) and
what overlapping the steps buys (edgeseg.predict.frames, the path of `edgeseg predict` and
`edgeseg bench --images`): per-frame end-to-end time, model-only time, and the overhead
between them, one step after the other against overlapped. Also a model that takes the
decoded uint8 image (scaling folded into its first conv: edgeseg.export.input_fold), with
logits or class ids out, to show what moving those steps into the model buys.

The model: an ONNX file, bundle or model directory, or by default an untrained swiftnet
(width 0.5, decoder 64) with trained-looking BatchNorm statistics exported to fp32 ONNX at
the images' size (latency does not depend on the weights).

    python bench/frame_overhead.py [MODEL] [--images ../shared/data/camvid/val] [--count 30] [--rounds 3]
        [--workers 1 2] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from edgeseg.benchmark import end_to_end, measure_latency
from edgeseg.data.classes import CAMVID
from edgeseg.data.imageio import read_image
from edgeseg.export.input_fold import DecodedImageInput, PixelInput
from edgeseg.export.onnx import export_onnx
from edgeseg.models import create_model, load_model_dir, model_config_for, save_model_dir
from edgeseg.predict.frames import ordered_frames
from edgeseg.predict.outputs import label_png
from edgeseg.predict.predictors import OnnxPredictor, labels_from_logits, load_predictor, model_input


def untrained_model_dir(folder: Path, size: tuple[int, int]) -> Path:
    torch.manual_seed(0)
    model = create_model("swiftnet", CAMVID.num_classes, width=0.5, decoder=64).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(-1.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return save_model_dir(model, model_config_for(model, CAMVID, size), folder / "model")


def decoded_image_session(model_dir: Path, size: tuple[int, int], threads: int, class_ids: bool):
    """ONNX Runtime session of the model taking (1, H, W, 3) uint8 and giving (1, C, H, W) logits
    or (1, H, W) uint8 ids."""
    loaded = load_model_dir(model_dir)
    stride = loaded.config.output_stride
    example = torch.randint(0, 256, (1, 3, stride * 4, stride * 4), dtype=torch.uint8)
    pixel_model = PixelInput(loaded.model.eval(), loaded.config.mean, loaded.config.std, example)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DecodedImageInput(pixel_model, stride, class_ids),
                          (torch.zeros(1, *size, 3, dtype=torch.uint8),), buffer, input_names=["image"],
                          output_names=["labels"], opset_version=17, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return session, pixel_model.folded


def median_ms(step, items, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        for item in items:
            started = time.perf_counter()
            step(item)
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def interleaved_medians(steps: dict[str, tuple], rounds: int) -> dict[str, float]:
    """Each step's median ms, the steps taken in turn (one item of each), so that a slow
    spell of a shared machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(rounds * max(len(items) for _, items in steps.values())):
        for name, (step, items) in steps.items():
            started = time.perf_counter()
            step(items[index % len(items)])
            times[name].append(1000 * (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="ONNX file, bundle or model directory (default: untrained swiftnet)")
    parser.add_argument("--images", type=Path, default=Path("../shared/data/camvid/val"))
    parser.add_argument("--count", type=int, default=30, help="images used")
    parser.add_argument("--rounds", type=int, default=3, help="end-to-end passes over the images per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="overlapped settings timed")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: torch's, i.e. all cores or "
                        "OMP_NUM_THREADS); with workers decoding alongside, fewer than the cores may be faster")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = sorted(args.images.glob("*.png"))[:args.count]
    if not paths:
        raise SystemExit(f"error: {args.images}: no PNG images")
    rgbs = [read_image(p) for p in paths]
    size = rgbs[0].shape[:2]
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else untrained_model_dir(Path(tmp), size)
        if args.model is None or (model_dir / "config.json").is_file():
            onnx_file = Path(tmp) / "model.onnx"
            export_onnx(model_dir, onnx_file, False, size, [(torch.zeros(3, *size), None)])
            predictor = OnnxPredictor.from_file(onnx_file)
            decoded, folded = decoded_image_session(model_dir, size, threads, False)
            decoded_ids, _ = decoded_image_session(model_dir, size, threads, True)
        else:
            predictor, decoded, decoded_ids, folded = load_predictor(model_dir), None, None, False
        print(f"{args.model or 'untrained swiftnet width 0.5, decoder 64'}, fp32 ONNX at {size[0]}x{size[1]}, "
              f"{len(paths)} images from {args.images}; ONNX Runtime {threads} thread(s); "
              f"{platform.processor() or platform.machine()}\n  {' '.join(sys.argv)}\n")
        import cv2

        blobs = [p.read_bytes() for p in paths]
        tensors = [model_input(predictor, rgb) for rgb in rgbs]
        logits = [predictor.logits(t) for t in tensors[:5]]
        labels = [labels_from_logits(l, *size) for l in logits]
        steps = {"decode PNG (Pillow, used)": (read_image, paths),
                 "decode PNG (cv2.imdecode + BGR->RGB)": (lambda b: cv2.cvtColor(cv2.imdecode(
                     np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), blobs),
                 "normalise + pad (model_input)": (lambda rgb: model_input(predictor, rgb), rgbs),
                 "model (fp32 ONNX)": (predictor.logits, tensors),
                 "class ids (labels_from_logits)": (lambda l: labels_from_logits(l, *size), logits),
                 "label PNG encode (zlib level 1)": (lambda label: label_png(label, predictor.classes), labels)}
        if decoded is not None:
            how = "scaling folded into the first conv" if folded else "scaling a multiply in the graph"
            steps[f"model on the decoded uint8 image, logits out ({how})"] = (
                lambda rgb: decoded.run(None, {"image": rgb[None]}), rgbs)
            steps["the same, uint8 class ids out (ArgMax in ONNX Runtime)"] = (
                lambda rgb: decoded_ids.run(None, {"image": rgb[None]}), rgbs)
        print("| step | median ms |\n|---|---:|")
        for name, ms in interleaved_medians(steps, 1).items():
            print(f"| {name} | {ms:.2f} |")

        settings = [("one step after the other", 0), *((f"overlapped, {w} worker(s)", w) for w in args.workers)]
        frame_ms: dict[str, list[float]] = {name: [] for name, _ in settings}
        model_ms: list[float] = []
        decoded_frame_ms: list[float] = []
        decoded_model_ms: list[float] = []
        for _ in range(args.rounds):  # interleaved, so a slow spell of a shared machine hits every setting
            model_ms.append(measure_latency(predictor, predictor.padded_size(*size), runs=10)["latency_ms"])
            for name, workers in settings:
                frame_ms[name].append(1000 / end_to_end(predictor, paths, workers=workers)["fps"])
            if decoded is not None:
                decoded_model_ms.append(median_ms(lambda rgb: decoded.run(None, {"image": rgb[None]}), rgbs[:10], 1))
                started = time.perf_counter()
                for _ in ordered_frames(paths, lambda p: read_image(p)[None],
                                        lambda x: torch.from_numpy(decoded.run(None, {"image": x})[0]),
                                        lambda p, out: label_png(labels_from_logits(out, *size), predictor.classes),
                                        max(args.workers)):
                    pass
                decoded_frame_ms.append(1000 * (time.perf_counter() - started) / len(paths))
        model = statistics.median(model_ms)
        print(f"\nmodel only (fp32 ONNX, padded {'x'.join(map(str, predictor.padded_size(*size)))}): {model:.1f} ms; "
              f"overhead = end to end - model only")
        print("| path | end to end ms/frame | FPS | overhead ms/frame |\n|---|---:|---:|---:|")
        for name, values in frame_ms.items():
            frame = statistics.median(values)
            print(f"| {name} | {frame:.1f} | {1000 / frame:.1f} | {frame - model:.1f} |")
        if decoded is not None:
            frame = statistics.median(decoded_frame_ms)
            print(f"| uint8-in model, scaling folded ({statistics.median(decoded_model_ms):.1f} ms alone), overlapped, "
                  f"{max(args.workers)} worker(s) | {frame:.1f} | {1000 / frame:.1f} | {frame - model:.1f} |")

if __name__ == "__main__":
    main()
