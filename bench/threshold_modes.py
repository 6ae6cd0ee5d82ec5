"""Per-layer vs per-output-channel thresholding of one dense model at the same sparsity.

Both modes get the same bucket targets with the caps opened (value-max and value-maxratio
that never bind), so each thresholded layer ends at the same zero fraction and the two
models differ only in which weights were cut. No fine-tuning: this measures the damage the
cut itself does, evaluated on the val split at full resolution.

    python bench/threshold_modes.py MODEL_DIR [--data camvid:../shared/data/camvid]
        [--fractions 0.5 0.7 0.8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from edgeseg.compress.threshold import ThresholdConfig, threshold_model_dir
from edgeseg.data.spec import open_dataset
from edgeseg.evaluation import evaluate
from edgeseg.predict.predictors import load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", default="camvid:../shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.7, 0.8])
    args = parser.parse_args()

    cpu = torch.device("cpu")
    work = Path(tempfile.mkdtemp(prefix="edgeseg-threshold-"))

    def miou(model_dir: Path) -> float:
        return evaluate(load_predictor(model_dir, cpu), open_dataset(args.data, args.split), num_workers=0)["miou"]

    rows = [("dense", "-", 0.0, miou(args.model))]
    for fraction in args.fractions:
        for per_channel in (False, True):
            config = ThresholdConfig(fraction_low=fraction, fraction_mid=fraction, fraction_high=fraction,
                                     value_max=1e9, value_maxratio=1.0, per_channel=per_channel)
            out = work / f"{fraction}-{per_channel}"
            _, metrics = threshold_model_dir(args.model, out, config)
            rows.append(("per channel" if per_channel else "per layer", f"{fraction:.2f}",
                         metrics["sparsity_after"], miou(out)))

    print(f"command: python {' '.join(sys.argv)}")
    print(f"{args.model} on {args.data} [{args.split}], no fine-tuning after thresholding")
    print(f"{'mode':<12} {'target':>7} {'sparsity %':>11} {'mIoU %':>8}")
    for mode, target, sparsity, value in rows:
        print(f"{mode:<12} {target:>7} {100 * sparsity:>11.2f} {100 * value:>8.2f}")


if __name__ == "__main__":
    main()
