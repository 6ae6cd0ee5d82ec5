"""int8 deployment, measured: a float model directory through `edgeseg quantize` (post-training
and, optionally, quantization-aware) and `edgeseg export`, against the float model in PyTorch
and ONNX Runtime and against ONNX Runtime's own quantize_static (default settings), the peer
a user would try first. mIoU on the full val split in ONNX Runtime with all graph
optimisations; latency of every ONNX file timed side by side (interleaved) in one run.

    python bench/int8_onnx.py MODEL_DIR --data camvid:../shared/data/camvid [--qat QAT_MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from edgeseg.benchmark import measure_side_by_side
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.compress.sample_images import real_check_images
from edgeseg.data.spec import open_dataset
from edgeseg.evaluation import evaluate
from edgeseg.export.onnx import export_onnx
from edgeseg.predict.predictors import OnnxPredictor, load_predictor


def ort_quantize_static(fp32_onnx: Path, out: Path, images: list[torch.Tensor], size: tuple[int, int]) -> None:
    """ONNX Runtime's static quantization with its default settings (QDQ, u8 activations,
    s8 weights, full range, per tensor), calibrated on the same images as ours."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    batches = [torch.nn.functional.pad(img, (0, size[1] - img.shape[-1], 0, size[0] - img.shape[-2]))[None].numpy()
               for img in images]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"image": batch} for batch in batches)

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32_onnx), str(out), Reader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a float model directory")
    parser.add_argument("--data", required=True)
    parser.add_argument("--qat", type=Path, nargs="+", default=[],
                        help="quantization-aware trained model directories to add (named by their folder)")
    parser.add_argument("--size", type=int, nargs=2, default=None, help="export size (default: the val image size)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--calibration", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-bench-"))
    val = open_dataset(args.data, "val")
    size = tuple(args.size) if args.size else tuple(val.read(0)[1].shape)
    check = [(img, None) for img in real_check_images(args.model, args.data, "val", 4)]
    calibration = real_check_images(args.model, args.data, "train", args.calibration, spread=True)

    rows, files = {}, {}
    float_predictor = load_predictor(args.model, torch.device("cpu"))
    rows["float (PyTorch)"] = evaluate(float_predictor, val, num_workers=0)["miou"]
    files["fp32 ONNX"] = work / "fp32.onnx"
    export_onnx(args.model, files["fp32 ONNX"], False, size, check)
    variants = {"PTQ float-scale x86": QuantizeConfig(scheme="float", target="x86", calibration_batches=args.calibration),
                "PTQ power-of-two x86": QuantizeConfig(scheme="power-of-two", target="x86",
                                                       calibration_batches=args.calibration),
                "PTQ float-scale full-range": QuantizeConfig(scheme="float", target="full-range",
                                                             calibration_batches=args.calibration),
                "PTQ float-scale x86 float-first-layer": QuantizeConfig(
                    scheme="float", target="x86", calibration_batches=args.calibration, quantize_first_layer=False)}
    quantized = {}
    for name, config in variants.items():
        quantized[name] = work / name.replace(" ", "-")
        quantize_model_dir(args.model, quantized[name], config, calibration)
    for qat_dir in args.qat:
        quantized[f"QAT {qat_dir.name}"] = qat_dir
    for name, model_dir in quantized.items():
        rows[f"{name} (PyTorch fake-quant)"] = evaluate(load_predictor(model_dir, torch.device("cpu")), val,
                                                        num_workers=0)["miou"]
        files[f"{name} int8 ONNX"] = work / f"{name.replace(' ', '-')}.onnx"
        try:
            export_onnx(model_dir, files[f"{name} int8 ONNX"], True, size, check)
        except Exception as err:  # a failed export check is a result here
            print(f"{name}: {err}", file=sys.stderr)
            files.pop(f"{name} int8 ONNX")
    files["ORT quantize_static (defaults)"] = work / "ort-static.onnx"
    fixed = tuple(OnnxPredictor.from_file(files["fp32 ONNX"]).size)
    ort_quantize_static(files["fp32 ONNX"], files["ORT quantize_static (defaults)"], calibration, fixed)
    predictors = {name: OnnxPredictor.from_file(path) for name, path in files.items()}
    for name, predictor in predictors.items():
        rows[f"{name} (ONNX Runtime)"] = evaluate(predictor, val, num_workers=0)["miou"]
    latency = measure_side_by_side(predictors, size, runs=args.runs)

    fp32 = latency["fp32 ONNX"]["latency_ms"]
    print(f"\nint8 deployment on {args.data} val ({len(val)} images, full {size[0]}x{size[1]}), "
          f"{torch.get_num_threads()} threads; latency batch 1, median of {args.runs}, interleaved\n")
    print(f"| model | backend | val mIoU % | vs float | latency ms | speed-up vs fp32 ONNX |")
    print("|---|---|---:|---:|---:|---:|")
    base = rows["float (PyTorch)"]
    for name, miou in rows.items():
        label, backend = name.rsplit(" (", 1)
        ms = latency.get(label, {}).get("latency_ms")
        speed = f"{fp32 / ms:.2f}x" if ms else "-"
        print(f"| {label} | {backend[:-1]} | {100 * miou:.2f} | {100 * (miou - base):+.2f} | "
              f"{f'{ms:.1f}' if ms else '-'} | {speed} |")
    print(f"\nreproduce: python bench/int8_onnx.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
