"""edgeseg serve under load and across a kill -9: 50 concurrent page and API requests while a
job trains (errors, median and p95 latency), then the server is killed with SIGKILL mid-job and
restarted; the job must resume from its last checkpoint and finish with every epoch's curve.

    PYTHONPATH=src python bench/serve_load.py [--requests 50] [--epochs 150]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_tiny_folders  # noqa: E402
from test_serve_browser import free_port, start_server  # noqa: E402


def post(url: str, fields: dict) -> str:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.url


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def timed_get(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = -1
    return status, 1000 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=150)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    data = write_tiny_folders(tmp / "data" / "tiny", count=10)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(tmp / "work", tmp / "data", port)
    post(base + "/datasets/new", {"mode": "folders", "name": "tiny", "image_folder": data / "images",
                                  "label_folder": data / "labels", "val_percent": "20", "val_mode": "percent",
                                  "classes_file": data / "classes.txt", "colormap": "label_image"})
    job_url = post(base + "/models/new", {"dataset": "tiny", "architecture": "basic_encdec", "name": "load",
                                          "epochs": args.epochs, "lr": "0.01", "batch_size": "2", "crop": "32 32",
                                          "optimizer": "adam", "schedule": "poly", "class_weights": "none",
                                          "num_workers": "0", "yaml": ""})
    job_id = job_url.rsplit("/", 1)[1]
    while not get_json(f"{base}/api/jobs/{job_id}")["metrics"]:
        time.sleep(0.2)
    urls = [base + path for path in ("/", f"/jobs/{job_id}", f"/api/jobs/{job_id}", "/datasets/tiny",
                                     "/datasets/tiny/explore", "/datasets/tiny/thumb/train/0/image.png",
                                     "/api/jobs", "/models/new", "/static/app.js", "/test")]
    requests = [urls[i % len(urls)] for i in range(args.requests)]
    with ThreadPoolExecutor(args.requests) as pool:
        results = list(pool.map(timed_get, requests))
    state = get_json(f"{base}/api/jobs/{job_id}")
    times = sorted(ms for _, ms in results)
    errors = [status for status, _ in results if status != 200]
    print(f"{args.requests} concurrent requests while job {job_id} trained (state {state['job']['state']}, "
          f"epoch {len(state['metrics'])}): {len(errors)} errors, median {times[len(times) // 2]:.0f} ms, "
          f"p95 {times[int(0.95 * (len(times) - 1))]:.0f} ms, max {times[-1]:.0f} ms")
    before = len(state["metrics"])
    server.send_signal(signal.SIGKILL)
    server.wait()
    time.sleep(1.0)
    on_disk = json.loads((tmp / "work" / "jobs" / job_id / "job.json").read_text())
    print(f"kill -9 of the server at epoch >= {before}; job.json says '{on_disk['state']}'")
    server = start_server(tmp / "work", tmp / "data", port)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            state = get_json(f"{base}/api/jobs/{job_id}?lines=1000")
            if state["job"]["state"] in ("done", "failed", "aborted"):
                break
            time.sleep(0.5)
        epochs = [int(row["epoch"]) for row in state["metrics"]]
        resumed = [line for line in state["log"].splitlines() if "resuming" in line]
        print(f"after the restart: job {state['job']['state']}, epochs in metrics.csv "
              f"{epochs[0]}..{epochs[-1]} ({len(epochs)} rows, complete: {epochs == list(range(1, args.epochs + 1))})"
              f"; {resumed[-1] if resumed else 'no resume line in the log'}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    print(f"(work folder: {tmp})")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
