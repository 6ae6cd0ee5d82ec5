"""Latency of a predictor: median and 90th percentile over timed runs after a warm-up."""

from __future__ import annotations

import statistics
import time

import torch


def measure_latency(predictor, size: tuple[int, int], runs: int = 20, warmup: int = 3) -> dict:
    """Time ``predictor.logits`` on one (1, 3, H, W) image, synchronising CUDA after each run.

    Returns the keys of ``edgeseg bench --json``: backend, size, latency_ms (median),
    latency_ms_p90, fps (1000 / median) and threads (intra-op threads used).
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    image = torch.zeros(1, 3, *size)
    cuda = predictor.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            started = time.perf_counter()
            predictor.logits(image)
            if cuda:
                torch.cuda.synchronize(predictor.device)
            if index >= warmup:
                times.append(1000 * (time.perf_counter() - started))
    times.sort()
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"backend": predictor.backend, "size": list(size), "latency_ms": median, "latency_ms_p90": p90,
            "fps": 1000 / median, "threads": torch.get_num_threads(), "runs": runs}
