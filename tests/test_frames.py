"""Overlapped prediction (edgeseg.predict.frames and the bundle's copy): results in input
order, the same files byte for byte as one step after the other, and errors raised at the
item they belong to with every earlier output complete."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from conftest import error_line, random_image, run_cli_here as run_cli, write_image
from edgeseg.data.classes import generic_classes
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.predict.frames import FRAMES_AHEAD_PER_WORKER, ordered_frames

RNG = np.random.default_rng(23)


def jitter(seed: int) -> None:
    time.sleep(random.Random(seed).uniform(0, 0.004))


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order_with_bounded_read_ahead(workers):
    lock, state = threading.Lock(), {"prepared_not_run": 0, "most": 0}
    run_order = []

    def prepare(item):
        jitter(item)
        with lock:
            state["prepared_not_run"] += 1
            state["most"] = max(state["most"], state["prepared_not_run"])
        return item * 10

    def run(value):
        with lock:
            state["prepared_not_run"] -= 1
        run_order.append(value // 10)
        return value + 1

    def finish(item, output):
        jitter(1000 + item)
        return item, output

    results = list(ordered_frames(range(40), prepare, run, finish, workers))
    assert results == [(i, 10 * i + 1) for i in range(40)]
    assert run_order == list(range(40))  # the model sees the frames in order too
    # read ahead: at most that many waiting, and the next one may finish before the model takes the current one
    assert state["most"] <= (FRAMES_AHEAD_PER_WORKER * workers + 1 if workers else 1)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("failing_step", ["prepare", "finish"])
def test_an_error_is_raised_at_its_item_after_the_earlier_items_finished(workers, failing_step):
    finished, ran = [], []

    def prepare(item):
        jitter(item)
        if failing_step == "prepare" and item == 5:
            raise ValueError("item 5 is corrupt")
        return item

    def run(item):
        ran.append(item)
        return item

    def finish(item, output):
        jitter(100 - item)  # later items finish sooner: the order must not come from the timing
        if failing_step == "finish" and item == 5:
            raise ValueError("item 5 is corrupt")
        finished.append(item)
        return item

    yielded = []
    with pytest.raises(ValueError, match="item 5 is corrupt"):
        for result in ordered_frames(range(20), prepare, run, finish, workers):
            yielded.append(result)
    assert yielded == [0, 1, 2, 3, 4]
    assert set(range(5)) <= set(finished)
    if failing_step == "prepare":
        assert ran == [0, 1, 2, 3, 4] and sorted(finished) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("basic_encdec", num_classes=3, width=4).eval()
    return save_model_dir(model, model_config_for(model, generic_classes(3), (32, 48)),
                          tmp_path_factory.mktemp("frames") / "model")


def files_of(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_predict_writes_the_same_bytes_with_and_without_workers(model_dir, tmp_path):
    for n in range(7):  # sizes that pad differently to the stride
        write_image(tmp_path / "images" / f"im{n}.png", random_image(RNG, 30 + n, 40 + 2 * n))
    for workers in ("0", "2"):
        run_cli("predict", str(model_dir), str(tmp_path / "images"), "--out", str(tmp_path / f"out{workers}"),
                "--overlay", "--workers", workers, check=True)
    sequential, overlapped = files_of(tmp_path / "out0"), files_of(tmp_path / "out2")
    assert len([n for n in sequential if n.endswith(".png")]) == 14
    assert sequential == overlapped


def test_a_corrupt_image_stops_predict_with_the_same_line_and_whole_files(model_dir, tmp_path):
    for n in range(6):
        write_image(tmp_path / "images" / f"im{n}.png", random_image(RNG, 32, 48))
    (tmp_path / "images" / "im3.png").write_bytes((tmp_path / "images" / "im2.png").read_bytes()[:300])
    lines = {}
    for workers in ("0", "2"):
        proc = run_cli("predict", str(model_dir), str(tmp_path / "images"), "--out", str(tmp_path / f"out{workers}"),
                       "--workers", workers)
        lines[workers] = error_line(proc)
        written = sorted(p.name for p in (tmp_path / f"out{workers}").iterdir() if not p.name.startswith("."))
        assert written[:3] == ["im0.png", "im1.png", "im2.png"] and "im3.png" not in written
        assert not [p for p in (tmp_path / f"out{workers}").iterdir() if p.name.endswith(".tmp")]
    assert lines["0"] == lines["2"] and "im3.png: truncated or corrupt image" in lines["0"]
    assert files_of(tmp_path / "out0")["im2.png"] == files_of(tmp_path / "out2")["im2.png"]


def test_bundle_run_py_overlaps_with_the_same_outputs_and_errors(model_dir, tmp_path):
    from edgeseg.export.bundle import write_bundle

    write_bundle(model_dir, tmp_path / "bundle", (32, 48), [(torch.randn(3, 32, 48), None)])
    for n in range(5):
        write_image(tmp_path / "images" / f"im{n}.png", random_image(RNG, 32, 40 + n))
    outputs = {}
    for workers in ("0", "2"):
        proc = subprocess.run([sys.executable, str(tmp_path / "bundle" / "run.py"), "-i", "images", "-o",
                               f"out{workers}", "--overlay", "--workers", workers],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [line.split(":")[0] for line in proc.stdout.splitlines()] == [f"images/im{n}.png" for n in range(5)]
        outputs[workers] = files_of(tmp_path / f"out{workers}")
    assert len(outputs["0"]) == 10 and outputs["0"] == outputs["2"]
    (tmp_path / "images" / "im1.png").write_bytes(b"junk")
    proc = subprocess.run([sys.executable, str(tmp_path / "bundle" / "run.py"), "-i", "images", "-o", "bad"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert error_line(proc) == "error: images/im1.png: not a readable image (unknown or corrupt format)"
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["im0.png"]


def video_frames(path) -> list[np.ndarray]:
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    capture.release()
    return frames


def test_videos_come_out_frame_for_frame_the_same_with_workers(model_dir, tmp_path):
    import cv2

    from edgeseg.export.bundle import write_bundle

    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    for _ in range(7):
        writer.write(random_image(RNG, 32, 48))
    writer.release()
    write_bundle(model_dir, tmp_path / "bundle", (32, 48), [(torch.randn(3, 32, 48), None)])
    for workers in ("0", "2"):
        run_cli("predict", str(model_dir), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / f"out{workers}"),
                "--workers", workers, check=True)
        proc = subprocess.run([sys.executable, str(tmp_path / "bundle" / "run.py"), "-i", "clip.mp4", "-o",
                               f"bundle{workers}", "--workers", workers], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == 0 and "7 frames" in proc.stdout, proc.stderr
    for prefix in ("out", "bundle"):
        sequential, overlapped = (video_frames(tmp_path / f"{prefix}{w}" / "clip_overlay.mp4") for w in "02")
        assert len(sequential) == 7 and all(np.array_equal(a, b) for a, b in zip(sequential, overlapped))
