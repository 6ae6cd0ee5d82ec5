"""Filter pruning on CamVid, measured (issue 23): a trained dense model pruned to a fraction of its
MACs two ways, uniformly (every layer the same keep, ICNet's compress.py) and by the sensitivity
allocation (`--target-macs`), each fine-tuned, BatchNorm-folded, quantized and exported to int8
ONNX by one `edgeseg run` recipe; and, optionally, the same net trained small from scratch.
Then, side by side in one process: val mIoU of every ONNX file in ONNX Runtime, fp32 and int8
latency at the val image size (interleaved runs, median), and end-to-end frames per second
(decode, normalise, predict, class ids, label PNG) as `edgeseg bench --images` measures them.

    python bench/prune_camvid.py --dense RUN/best --train-config configs/camvid-cpu-avx2.yaml \
        [--small SMALL_RUN/best] [--target 0.5] [--epochs 20] [--work DIR] \
        [--deep-target 0.4 --channel-multiple 8]

"deep" is a third branch: the sensitivity allocation to --deep-target of the MACs with every kept
filter count rounded to --channel-multiple (the shapes CPU kernels run fastest). A work directory
from an earlier run is resumed: finished stages are not run again.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from edgeseg.benchmark import end_to_end, measure_side_by_side
from edgeseg.compress.prune import hard_prune, plan_pruning
from edgeseg.compress.sample_images import labelled_images
from edgeseg.data.spec import open_dataset
from edgeseg.evaluation import evaluate
from edgeseg.export.onnx import export_onnx
from edgeseg.layout import BUNDLE_MODEL, STAGE_MODEL, STAGES_DIR
from edgeseg.models.model_dir import load_model_dir, read_model_config
from edgeseg.models.profile import profile_model
from edgeseg.models.stride import round_up
from edgeseg.pipeline.recipe import check_recipe
from edgeseg.pipeline.runner import run_pipeline
from edgeseg.predict.predictors import OnnxPredictor
from edgeseg.schema import load_yaml


def uniform_keep_for(model_dir: Path, target: float) -> tuple[float, float]:
    """The largest uniform keep (to 1/1000) whose hard-pruned model has at most ``target`` x the
    dense MACs, and the fraction it reaches."""
    loaded = load_model_dir(model_dir)
    size = round_up(loaded.config.input_size, loaded.config.output_stride)
    dense = profile_model(loaded.model, size).macs

    def fraction(keep: float) -> float:
        model = copy.deepcopy(loaded.model)
        hard_prune(model, plan_pruning(model, keep))
        return profile_model(model, size).macs / dense

    low, high = 0.05, 1.0  # fraction(low) <= target < fraction(high)
    while high - low > 1e-3:
        middle = (low + high) / 2
        low, high = (middle, high) if fraction(middle) <= target else (low, middle)
    return low, fraction(low)


def branch_recipe(name: str, dense: Path, train: dict, prune: dict, epochs: int, work: Path) -> dict:
    """prune -> fine-tune -> fold-bn -> quantize -> int8 export, from the dense model."""
    train = copy.deepcopy(train)
    train.pop("name", None)
    train.pop("runs_dir", None)
    return {"name": name, "out_dir": str(work / name), "start": str(dense), "train": train,
            "report": {"split": "val", "latency_runs": 20},
            "stages": {"prune": prune,
                       "finetune": {"stage": "train", "train": {
                           "epochs": epochs, "eval_every": max(1, epochs // 4), "optimizer": {"lr": 0.0005},
                           "schedule": {"warmup_epochs": 0}, "augment": {"phases": []}}},
                       "fold-bn": {"check_images": 4},
                       "quantize": {"quantization": {"scheme": "power-of-two", "target": "x86",
                                                     "calibration_batches": 20}},
                       "export": {"format": "onnx-int8", "check_images": 8}}}


def frame_files(val, count: int, folder: Path) -> list[Path]:
    """The first ``count`` val images as files (a generated dataset's are written as PNGs)."""
    count = min(count, len(val))
    if hasattr(val, "samples"):
        return [val.samples[i].image for i in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(val.read(i)[0]).save(folder / f"{i:04d}.png")
    return sorted(folder.glob("*.png"))


def stage_path(pipeline: Path, index: int, name: str, output: str = STAGE_MODEL) -> Path:
    return pipeline / STAGES_DIR / f"{index:02d}-{name}" / output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", type=Path, required=True, help="the trained dense model directory")
    parser.add_argument("--train-config", type=Path, required=True, help="the dense model's training config")
    parser.add_argument("--small", type=Path, default=None, help="the narrower net trained from scratch")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the dense MACs to keep")
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs after pruning")
    parser.add_argument("--deep-target", type=float, default=None,
                        help="also prune (by the sensitivity scan) to this fraction of the MACs, with --channel-multiple")
    parser.add_argument("--channel-multiple", type=int, default=8, help="channel multiple of the --deep-target branch")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--frames", type=int, default=40, help="val images for the end-to-end FPS")
    parser.add_argument("--work", type=Path, default=Path("runs/prune-bench"))
    args = parser.parse_args()
    train = load_yaml(args.train_config)
    dense_config = read_model_config(args.dense)  # fine-tuning normalises as the dense model was trained
    train["data"].update(mean=list(dense_config.mean), std=list(dense_config.std))
    data = train["data"]["spec"]
    keep, reached = uniform_keep_for(args.dense, args.target)
    print(f"uniform keep {keep:.3f} leaves {reached:.3f} of the MACs")
    seconds = {}
    branches = {"uniform": {"keep": round(keep, 3)}, "sensitivity": {"target_macs": args.target}}
    if args.deep_target is not None:
        branches["deep"] = {"target_macs": args.deep_target, "channel_multiple": args.channel_multiple}
    for name, prune in branches.items():
        recipe, stages = check_recipe(branch_recipe(name, args.dense, train, prune, args.epochs, args.work), name)
        started = time.perf_counter()
        report = run_pipeline(recipe, stages, f"python bench/prune_camvid.py ({name})")
        seconds[name] = {row["stage"]: row["seconds"] for row in report["stages"] if row.get("seconds") is not None}
        seconds[name]["total"] = time.perf_counter() - started

    val = open_dataset(data, "val")
    size = tuple(val.read(0)[1].shape)
    check = labelled_images(args.dense, data, "val", 4)
    models = {"dense": args.dense}
    models.update({f"{name} pruned": stage_path(args.work / name, 2, "finetune") for name in branches})
    if args.small is not None:
        models["trained small"] = args.small
    files = {}
    for name, model_dir in models.items():
        files[f"{name} fp32"] = args.work / f"{name.replace(' ', '-')}-fp32.onnx"
        export_onnx(model_dir, files[f"{name} fp32"], False, size, check)
    for name in branches:
        files[f"{name} pruned int8"] = stage_path(args.work / name, 5, "export", BUNDLE_MODEL)
    predictors = {name: OnnxPredictor.from_file(path) for name, path in files.items()}
    miou = {name: evaluate(predictor, val, num_workers=0)["miou"] for name, predictor in predictors.items()}
    loaded = {name: load_model_dir(path) for name, path in models.items()}
    macs = {name: profile_model(m.model, round_up(m.config.input_size, m.config.output_stride)).macs
            for name, m in loaded.items()}
    latency = measure_side_by_side(predictors, size, runs=args.runs)
    frames = frame_files(val, args.frames, args.work / "frames")
    timed = ["dense fp32", "uniform pruned fp32", "sensitivity pruned fp32", "sensitivity pruned int8"]
    if "deep" in branches:
        timed += ["deep pruned fp32", "deep pruned int8"]
    fps = {(name, workers): end_to_end(predictors[name], frames, workers=workers)
           for workers in (0, 2) for name in timed}

    base_ms, base_miou = latency["dense fp32"]["latency_ms"], miou["dense fp32"]
    print(f"\nFilter pruning on {data} val ({len(val)} images at {size[0]}x{size[1]}), target {args.target} of the MACs"
          f"{'' if args.deep_target is None else f' (deep: {args.deep_target}, channel multiple {args.channel_multiple})'}, "
          f"{args.epochs} fine-tuning epochs; ONNX Runtime, {torch.get_num_threads()} threads, latency median "
          f"of {args.runs} interleaved runs\n")
    print("| model | GMACs | val mIoU % | vs dense | latency ms | speed-up vs dense fp32 | end-to-end FPS "
          "sequential / overlapped | overhead ms/frame sequential / overlapped |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, predictor in predictors.items():
        model = name.rsplit(" ", 1)[0]
        gmacs = macs.get(model, macs.get(model.replace(" int8", ""), 0)) / 1e9
        ms = latency[name]["latency_ms"]
        frames_of = [fps[(name, workers)] for workers in (0, 2) if (name, workers) in fps]
        rate = " / ".join(f"{frame['fps']:.1f}" for frame in frames_of) or "-"
        overhead = " / ".join(f"{1000 / frame['fps'] - ms:.1f}" for frame in frames_of) or "-"
        print(f"| {name} | {gmacs:.3f} | {100 * miou[name]:.2f} | {100 * (miou[name] - base_miou):+.2f} | "
              f"{ms:.2f} | {base_ms / ms:.2f}x | {rate} | {overhead} |")
    print("\n(overlapped: 2 worker threads decode, normalise and encode around the model, as edgeseg predict "
          "does by default; sequential: --workers 0)")
    for name, times in seconds.items():
        print(f"\n{name}: " + ", ".join(f"{stage} {value / 60:.1f} min" for stage, value in times.items()))
    print(f"\nreproduce: python bench/prune_camvid.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}")


if __name__ == "__main__":
    main()
