"""``edgeseg demo``: the pipeline on built-in synthetic street scenes, runnable anywhere.

The label doctor, the staged sparse pipeline of caffe-jacinto's seeds (dense training, L1,
threshold, sparse fine-tuning with frozen zeros, BatchNorm folding) with its per-stage
report, post-training int8 quantization, a deploy bundle checked in ONNX Runtime, and
prediction with overlays by the deployed bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from edgeseg.data.doctor import check_dataset
from edgeseg.data.spec import open_source
from edgeseg.predict.predictors import load_predictor
from edgeseg.pipeline import run_pipeline
from edgeseg.pipeline.recipe import check_recipe
from edgeseg.predict.outputs import predict_images
from edgeseg.reports import print_doctor
from edgeseg.schema import apply_overrides

DEMO_SPEC = "synthetic:48"
DEMO_RECIPE = {
    "name": "demo",
    "train": {"data": {"spec": DEMO_SPEC, "num_workers": 0}, "model": {"name": "basic_encdec", "args": {"width": 16}},
              "augment": {"crop": [160, 224], "scale": {"min": 0.75, "max": 1.25}}, "epochs": 40, "batch_size": 8,
              "eval_every": 10, "optimizer": {"lr": 0.003}, "tensorboard": False},
    "report": {"latency_runs": 10},
    "stages": {
        "dense": {"stage": "train"},
        "l1": {"train": {"epochs": 10, "optimizer": {"lr": 0.001, "weight_decay": 0.002}}},
        "threshold": {"fraction_low": 0.5, "fraction_mid": 0.8, "fraction_high": 0.8, "per_channel": True,
                      "value_max": 1.0, "value_maxratio": 1.0},
        "sparse": {"train": {"epochs": 20, "optimizer": {"lr": 0.001}}},
        "fold-bn": {"check_images": 4},
        "quantize": {"quantization": {"scheme": "power-of-two", "calibration_batches": 8}},
        "export": {"format": "bundle", "check_images": 4},
    },
}


def run_demo(out_dir: Path, console: Console, overrides: list[str] = ()) -> dict:
    """Doctor -> the staged pipeline (train, l1, threshold, sparse fine-tune, fold-bn,
    quantize, export) -> predictions of the deployed bundle, on synthetic data; returns the
    pipeline report. ``overrides``: dotted key=value changes to DEMO_RECIPE."""
    source = open_source(DEMO_SPEC)
    console.rule("1. label doctor")
    print_doctor(check_dataset(source, ["train", "val"]), console)

    console.rule("2. staged pipeline: dense -> L1 -> threshold -> sparse fine-tune -> fold BN -> int8 -> bundle")
    raw = apply_overrides({**DEMO_RECIPE, "out_dir": str(out_dir)}, list(overrides))
    recipe, stages = check_recipe(raw, "demo recipe")
    report = run_pipeline(recipe, stages, " ".join(["edgeseg demo", *overrides, "--out", str(out_dir)]),
                          log=lambda line: console.print(line, markup=False, soft_wrap=True))
    final = out_dir / "stages" / report["stages"][-1]["stage"] / "bundle"

    console.rule("3. prediction with the deployed bundle (ONNX Runtime, int8)")
    predictor = load_predictor(final, torch.device("cpu"))
    val = source.dataset("val")
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(4):
        image, _ = val.read(index)
        path = image_dir / f"{val.sample_name(index)}.png"
        Image.fromarray(np.asarray(image)).save(path)
        paths.append(path)
    results = predict_images(predictor, paths, out_dir / "predictions", with_overlay=True)
    console.print(f"wrote {len(results)} label maps and overlays to {out_dir / 'predictions'}")

    console.rule("4. what each stage did")
    console.print((out_dir / "report.md").read_text(encoding="utf-8"), markup=False, soft_wrap=True)
    return report
