"""Training throughput: the edgeseg engine vs a bare PyTorch loop on the same model, data,
transforms, DataLoader settings and batch, interleaved in one run (engine, bare, engine, ...).

The engine's rate is its own per-epoch figure from metrics.csv (the training loop with lr
schedule, AMP/TensorBoard hooks, loss bookkeeping and progress); the per-epoch checkpoint
write, outside that loop, is timed separately and reported. The bare loop applies the same
config: class-weighted loss, bfloat16 autocast (``cpu_amp``) and channels-last where the
config asks for them.

    python bench/train_throughput.py [--config configs/camvid-cpu.yaml] [--data camvid:../shared/data/camvid]
        [--model swiftnet] [--model-args "{width: 0.25, decoder: 32}"] [--epochs 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from edgeseg.data.spec import open_source
from edgeseg.data.transforms import TrainTransform
from edgeseg.models import create_model
from edgeseg.training.checkpoint import save_training_state
from edgeseg.training.config import load_train_config
from edgeseg.training.losses import pixel_loss
from edgeseg.training.loop import (build_optimizer, cpu_bfloat16, loss_weights, read_metrics_csv, train,
                                training_autocast, training_memory_format)


def bare_epoch(config, dataset, model, optimizer, criterion) -> float:
    """One epoch of the plainest loop; returns images per second."""
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.data.num_workers)
    autocast = training_autocast(config, cuda=False)
    memory_format = training_memory_format(config, cuda=False)
    model.train()
    start, seen = time.perf_counter(), 0
    for images, labels in loader:
        with autocast():
            loss = criterion(model(images.contiguous(memory_format=memory_format)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a training config to take everything from (the options below are "
                                             "then ignored, except --epochs and --rounds)")
    parser.add_argument("--data", default="camvid:../shared/data/camvid")
    parser.add_argument("--model", default="swiftnet")
    parser.add_argument("--model-args", default="{width: 0.25, decoder: 32}", help="YAML mapping")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    runs = Path(tempfile.mkdtemp(prefix="edgeseg-bench-"))
    overrides = [f"epochs={args.epochs}", f"eval_every={args.epochs}", f"runs_dir={runs}"]
    if args.config is None:
        overrides += [f"data.spec={args.data}", f"model.name={args.model}", f"model.args={args.model_args}",
                      "augment.crop=[256,320]", "augment.scale={min: 0.75, max: 1.5}",
                      f"batch_size={args.batch_size}", "data.num_workers=1"]
    config = load_train_config(args.config, overrides)
    source = open_source(config.data.spec)
    dataset = source.dataset("train", cache=True,
                             transform=TrainTransform(config.augment, config.data.mean, config.data.std)).preload()
    criterion = pixel_loss(loss_weights(config, dataset, "cpu"), source.classes.ignore_index,
                           config.loss.ohem_threshold, config.loss.ohem_min_kept)

    engine_rates, bare_rates, checkpoint_seconds = [], [], []
    for round_index in range(args.rounds):
        result = train(load_train_config(args.config, overrides + [f"name=r{round_index}"]), log=lambda _: None)
        engine_rates += [float(r["train_images_per_s"]) for r in read_metrics_csv(result.run_dir / "metrics.csv")]
        torch.manual_seed(round_index)
        model = create_model(config.model.name, source.classes.num_classes, **config.model.args)
        model.to(memory_format=training_memory_format(config, cuda=False))
        optimizer = build_optimizer(config, model)
        bare_rates += [bare_epoch(config, dataset, model, optimizer, criterion) for _ in range(args.epochs)]
        start = time.perf_counter()
        save_training_state(runs / "ckpt", model, optimizer, {"epoch": 0})
        checkpoint_seconds.append(time.perf_counter() - start)

    engine, bare = statistics.median(engine_rates), statistics.median(bare_rates)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"model {config.model.name} {config.model.args}, {config.data.spec} train ({len(dataset)} images), "
          f"{config.augment.crop} crops, batch {config.batch_size}, "
          f"bfloat16 autocast {cpu_bfloat16(config)} (cpu_amp: {config.cpu_amp}), "
          f"channels-last {training_memory_format(config, cuda=False) == torch.channels_last}, "
          f"{torch.get_num_threads()} threads; "
          f"median of {len(engine_rates)} epochs each")
    print(f"{'loop':<10} {'images/s':>10}")
    print(f"{'bare':<10} {bare:>10.2f}")
    print(f"{'engine':<10} {engine:>10.2f}")
    print(f"engine / bare: {100 * engine / bare:.1f} %; checkpoint write per epoch: "
          f"{1000 * statistics.median(checkpoint_seconds):.0f} ms")


if __name__ == "__main__":
    main()
