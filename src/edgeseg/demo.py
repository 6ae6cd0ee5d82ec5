"""``edgeseg demo``: the pipeline on built-in synthetic street scenes, runnable anywhere.

Today it covers what has landed: the label doctor, a model directory, full-resolution
evaluation and prediction. Training and compression stages join as they land.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from edgeseg.data.doctor import check_dataset
from edgeseg.data.spec import open_source
from edgeseg.evaluate import evaluate
from edgeseg.fileio import atomic_write_json
from edgeseg.inference import load_predictor
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.predict import predict_images
from edgeseg.reports import print_doctor

DEMO_SPEC = "synthetic:32"


def run_demo(out_dir: Path, console: Console) -> dict:
    """Doctor -> model dir -> eval -> predict on synthetic data; returns the eval metrics."""
    from edgeseg.cli import print_metrics

    torch.manual_seed(0)
    source = open_source(DEMO_SPEC)
    console.rule("1. label doctor")
    print_doctor(check_dataset(source, ["train", "val"]), console)

    console.rule("2. model directory")
    model = create_model("basic_encdec", source.classes.num_classes, width=16)
    val = source.dataset("val")
    height, width = val.read(0)[1].shape
    model_dir = save_model_dir(model, model_config_for(model, source.classes, (height, width)), out_dir / "model")
    console.print(f"saved an untrained basic_encdec to {model_dir} (training lands with the training engine)")

    console.rule("3. evaluation (full resolution)")
    predictor = load_predictor(model_dir, torch.device("cpu"))
    metrics = evaluate(predictor, val, num_workers=0)
    print_metrics(metrics, f"{model_dir.name} on {DEMO_SPEC} [val]")
    atomic_write_json(out_dir / "eval.json", metrics)

    console.rule("4. prediction")
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
    return metrics
