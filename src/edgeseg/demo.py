"""``edgeseg demo``: the pipeline on built-in synthetic street scenes, runnable anywhere.

Today: the label doctor, a short training run, full-resolution evaluation of the best
checkpoint, and prediction with overlays. Compression and export stages join as they land.
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
from edgeseg.predict import predict_images
from edgeseg.reports import print_doctor
from edgeseg.train.config import load_train_config
from edgeseg.train.loop import train

DEMO_SPEC = "synthetic:48"
DEMO_TRAINING = [f"data.spec={DEMO_SPEC}", "name=demo", "model.name=basic_encdec", "model.args={width: 16}",
                 "augment.crop=[160,224]", "augment.scale={min: 0.75, max: 1.25}", "epochs=40",
                 "batch_size=8", "eval_every=10", "optimizer.lr=0.003", "data.num_workers=0", "tensorboard=false"]


def run_demo(out_dir: Path, console: Console) -> dict:
    """Doctor -> train -> eval -> predict on synthetic data; returns the eval metrics."""
    from edgeseg.cli import print_metrics

    source = open_source(DEMO_SPEC)
    console.rule("1. label doctor")
    print_doctor(check_dataset(source, ["train", "val"]), console)

    console.rule("2. training (basic_encdec, synthetic scenes, about a minute)")
    config = load_train_config(None, DEMO_TRAINING + [f"runs_dir={out_dir}"])
    result = train(config, log=lambda line: console.print(line, markup=False, soft_wrap=True))
    model_dir = result.run_dir / "best"

    console.rule("3. evaluation of the best checkpoint (full resolution)")
    predictor = load_predictor(model_dir, torch.device("cpu"))
    val = source.dataset("val")
    metrics = evaluate(predictor, val, num_workers=0)
    print_metrics(metrics, f"{model_dir} on {DEMO_SPEC} [val]")
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
