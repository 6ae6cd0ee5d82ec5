"""Latency of predictors: median and 90th percentile over timed runs after a warm-up.

Several predictors are timed side by side (one run of each in turn, repeated), so a slow
spell of a shared machine hits all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import statistics
import time

import torch

from edgeseg.data.imageio import read_image
from edgeseg.predict.outputs import label_png
from edgeseg.predict.frames import DEFAULT_WORKERS, ordered_frames
from edgeseg.predict.predictors import Predictor, labels_from_logits, model_input


def measure_side_by_side(predictors: dict[str, object], size: tuple[int, int], runs: int = 20,
                         warmup: int = 3) -> dict[str, dict]:
    """Time ``predictor.logits`` on one (1, 3, H, W) image for each predictor, interleaved,
    synchronising CUDA after each run.

    Returns, per name, the keys of ``edgeseg bench --json``: backend, size, latency_ms
    (median), latency_ms_p90, fps (1000 / median), threads (intra-op threads), runs.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    image = torch.zeros(1, 3, *size)
    times: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.inference_mode():
        for index in range(warmup + runs):
            for name, predictor in predictors.items():
                started = time.perf_counter()
                predictor.logits(image)
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize(predictor.device)
                if index >= warmup:
                    times[name].append(1000 * (time.perf_counter() - started))
    results = {}
    for name, values in times.items():
        values.sort()
        median = statistics.median(values)
        results[name] = {"backend": predictors[name].backend, "size": list(size), "latency_ms": median,
                         "latency_ms_p90": values[round(0.9 * (len(values) - 1))], "fps": 1000 / median,
                         "threads": torch.get_num_threads(), "runs": runs}
    return results


def measure_latency(predictor, size: tuple[int, int], runs: int = 20, warmup: int = 3) -> dict:
    """The latency of one predictor (see ``measure_side_by_side``)."""
    return measure_side_by_side({"model": predictor}, size, runs, warmup)["model"]


def end_to_end(predictor: Predictor, images: list, warmup: int = 2, workers: int = DEFAULT_WORKERS) -> dict:
    """Frames per second of the whole path a deployed model runs per image: decode the file,
    normalise, predict, argmax, encode the paletted label PNG (nothing written to disk), with
    ``workers`` threads overlapping the steps around the model as ``edgeseg predict`` does
    (0: one step after the other)."""
    def prepare(path) -> tuple[tuple[int, int], torch.Tensor]:
        image = read_image(path)
        return image.shape[:2], model_input(predictor, image)

    def run(prepared) -> tuple[tuple[int, int], torch.Tensor]:
        size, tensor = prepared
        return size, predictor.logits(tensor)

    def finish(path, output) -> bytes:
        size, logits = output
        return label_png(labels_from_logits(logits, *size), predictor.classes)

    with torch.inference_mode():
        for _ in ordered_frames(images[:warmup], prepare, run, finish, workers):
            pass
        started = time.perf_counter()
        for _ in ordered_frames(images, prepare, run, finish, workers):
            pass
        seconds = time.perf_counter() - started
    return {"images": len(images), "seconds": seconds, "fps": len(images) / seconds, "workers": workers}
