"""ONNX export (fp32, int8), its self-check, the deployed model measured by the same code,
and the deploy bundle running without edgeseg."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from conftest import run_cli, run_cli_here, write_image
from test_quantize import SPEC, float_model_dir

from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.compress.sample_images import labelled_images, real_check_images
from edgeseg.export import onnx as onnx_export
from edgeseg.export.onnx import ExportCheckError, export_onnx
from edgeseg.predict.predictors import OnnxPredictor, TorchPredictor
from edgeseg.models import load_model_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    source = float_model_dir(root / "float")
    images = real_check_images(source, SPEC, "train", 4, spread=True)
    quantize_model_dir(source, root / "int8", QuantizeConfig(calibration_batches=4), images)
    return root


def check(model_dir, count=3):
    return labelled_images(model_dir, SPEC, "val", count)


def optimized_ops(path: Path, tmp_path: Path) -> list[str]:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_fp32_export_computes_what_pytorch_computes(models, tmp_path):
    out = tmp_path / "model.onnx"
    metrics = export_onnx(models / "float", out, False, (240, 320), check(models / "float"))
    assert metrics["max_abs_diff"] < 1e-4 and metrics["agreement"] > 0.999
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    predictor = OnnxPredictor.from_file(out)
    assert predictor.size == (256, 320)  # padded to the output stride
    assert predictor.config.classes[0] == "sky"
    torch_predictor = TorchPredictor.from_dir(models / "float", torch.device("cpu"))
    image = check(models / "float", 1)[0][0][None]
    assert torch.allclose(predictor.logits(image), torch_predictor.logits(image), atol=1e-4)


def test_int8_export_runs_integer_kernels_and_agrees_with_the_simulation(models, tmp_path):
    out = tmp_path / "int8.onnx"
    metrics = export_onnx(models / "int8", out, True, (240, 320), check(models / "int8"))
    convs = sum(1 for _ in load_model_dir(models / "int8").model.modules() if isinstance(_, torch.nn.Conv2d))
    assert metrics["weights_int8"] == convs and metrics["biases_int32"] == convs
    assert metrics["agreement"] >= 0.99 and abs(metrics["miou_drop"]) <= 0.01 and metrics["relative_diff"] < 0.05
    proto = onnx.load(str(out))
    int8_weights = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer  # (zero points are 1-D)
                    if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == convs and max(int(np.abs(w).max()) for w in int8_weights) == 63  # x86 target
    ops = optimized_ops(out, tmp_path)
    assert ops.count("QLinearConv") == convs and "QLinearAdd" in ops and "Conv" not in ops


def test_int8_export_with_dynamic_size_runs_integer_kernels_at_other_sizes(models, tmp_path):
    out = tmp_path / "dynamic.onnx"
    metrics = export_onnx(models / "int8", out, True, (240, 320), check(models / "int8", 2), dynamic=True)
    assert metrics["sizes_checked"] == [[256, 320], [288, 352]] and metrics["agreement"] >= 0.99
    convs = sum(1 for _ in load_model_dir(models / "int8").model.modules() if isinstance(_, torch.nn.Conv2d))
    assert optimized_ops(out, tmp_path).count("QLinearConv") == convs
    predictor = OnnxPredictor.from_file(out)
    reference = TorchPredictor.from_dir(models / "int8", torch.device("cpu"))
    image = check(models / "int8", 1)[0][0][None, :, :200, :150]  # runs at 224x160
    assert (predictor.labels(image) == reference.labels(image)).float().mean() >= 0.99


def test_zero_weights_stay_zero_in_the_int8_file(models, tmp_path):
    out = tmp_path / "int8.onnx"
    export_onnx(models / "int8", out, True, (240, 320), check(models / "int8", 1))
    proto = onnx.load(str(out))
    zeros = sum(int((onnx.numpy_helper.to_array(i) == 0).sum()) for i in proto.graph.initializer
                if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)  # weights, not zero points
    quantized = load_model_dir(models / "int8").model
    assert zeros == sum(int((m.weight == 0).sum()) for m in quantized.modules() if isinstance(m, torch.nn.Conv2d))


def test_an_engine_that_computes_differently_fails_the_export(models, tmp_path, monkeypatch):
    """A saturating engine is emulated by clipping the int8 weights the way u8 x s8 pair sums
    clip on x86 without VNNI; the self-check must refuse to write the file."""
    original = onnx_export.fold_weight_quantization

    def saturating(proto):
        folded = original(proto)
        for init in proto.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8:
                init.CopyFrom(onnx.numpy_helper.from_array(np.clip(onnx.numpy_helper.to_array(init), -6, 6), init.name))
        return folded

    monkeypatch.setattr(onnx_export, "fold_weight_quantization", saturating)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportCheckError, match="not written.*logits off by up to"):
        export_onnx(models / "int8", out, True, (240, 320), check(models / "int8"))
    assert not out.exists()


def test_export_format_must_fit_the_model(models, tmp_path):
    from edgeseg.errors import ModelError

    with pytest.raises(ModelError, match="not a quantized model"):
        export_onnx(models / "float", tmp_path / "x.onnx", True, None, check(models / "float", 1))
    with pytest.raises(ModelError, match="onnx-int8"):
        export_onnx(models / "int8", tmp_path / "x.onnx", False, None, check(models / "int8", 1))


@pytest.mark.slow
def test_cli_quantize_export_eval_bench_and_predict_the_onnx_file(tmp_path):
    """In this process except bench (which sets the thread count): the commands' rules, not
    interpreter start-up, are what this checks."""
    source = float_model_dir(tmp_path / "float")
    run_cli_here("quantize", str(source), "--out", str(tmp_path / "q"), "--data", SPEC, "--scheme", "power-of-two",
            "--calibration-batches", "2", check=True)
    proc = run_cli_here("export", str(tmp_path / "q"), "--format", "onnx-int8", "--data", SPEC, "--size", "240", "320",
                   "--check-images", "2", check=True)
    assert "pixel agreement" in proc.stdout and (tmp_path / "q.onnx").is_file()
    proc = run_cli_here("eval", str(tmp_path / "q.onnx"), "--data", SPEC, "--json", str(tmp_path / "eval.json"), check=True)
    assert "mIoU" in proc.stdout
    proc = run_cli("bench", str(tmp_path / "q"), str(tmp_path / "q.onnx"), "--size", "240", "320",
                   "--runs", "2", "--json", str(tmp_path / "bench.json"), check=True)
    assert "onnxruntime" in proc.stdout and "pytorch" in proc.stdout
    image = write_image(tmp_path / "in" / "a.png", np.random.default_rng(0).integers(0, 256, (240, 320, 3)))
    run_cli_here("predict", str(tmp_path / "q.onnx"), str(image.parent), "--out", str(tmp_path / "pred"), check=True)
    assert (tmp_path / "pred" / "a.png").is_file()
    bad = run_cli_here("export", str(tmp_path / "float"), "--format", "onnx-int8", "--data", SPEC)
    assert bad.returncode == 2 and "not quantized" in bad.stderr


def isolated_python_path(tmp_path: Path) -> Path:
    """A folder holding only numpy, onnxruntime and Pillow (and what they import), linked from
    this environment: a Python started with -S and this as its path cannot import edgeseg."""
    import importlib.metadata as metadata

    root = tmp_path / "site"
    root.mkdir()
    for dist in ("numpy", "onnxruntime", "pillow", "packaging", "flatbuffers", "protobuf", "sympy", "mpmath",
                 "coloredlogs", "humanfriendly"):
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for top in {f.parts[0] for f in files if not f.parts[0].endswith((".dist-info", ".pth")) and f.parts[0] != ".."}:
            target = Path(metadata.distribution(dist).locate_file(top))
            if target.exists() and not (root / top).exists():
                (root / top).symlink_to(target)
    return root


@pytest.mark.slow
def test_bundle_runs_without_edgeseg_and_writes_what_edgeseg_predict_writes(models, tmp_path):
    from edgeseg.export.bundle import write_bundle

    bundle = tmp_path / "bundle"
    write_bundle(models / "int8", bundle, (240, 320), check(models / "int8", 2))
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "meta.yaml", "model.onnx", "requirements.txt",
                                                         "run.py"]
    rng = np.random.default_rng(3)
    # a PNG, a JPEG (labels are still PNG) and two files whose stems collide across folders
    write_image(tmp_path / "images" / "x.png", rng.integers(0, 256, (240, 320, 3)))
    write_image(tmp_path / "images" / "y.jpg", rng.integers(0, 256, (200, 300, 3)))
    write_image(tmp_path / "more" / "x.png", rng.integers(0, 256, (240, 320, 3)))
    sources = [str(tmp_path / "images"), str(tmp_path / "more" / "x.png")]
    site = isolated_python_path(tmp_path)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-S", "-c", "import edgeseg"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'edgeseg'" in probe.stderr
    proc = subprocess.run([sys.executable, "-S", str(bundle / "run.py"), "-i", *sources, "-o",
                           str(tmp_path / "bundle-out"), "--overlay"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run_cli("predict", str(bundle), *sources, "--out", str(tmp_path / "edgeseg-out"), "--overlay", check=True)
    names = ["images_x", "images_x_overlay", "more_x", "more_x_overlay", "y", "y_overlay"]
    for folder in ("bundle-out", "edgeseg-out"):
        assert sorted(p.stem for p in (tmp_path / folder).iterdir() if not p.name.startswith(".")) == names
    for name in names:  # label maps and overlays with their legends, pixel for pixel
        ours = Image.open(tmp_path / "edgeseg-out" / f"{name}.png")
        theirs = Image.open(tmp_path / "bundle-out" / f"{name}.png")
        assert ours.mode == theirs.mode and np.array_equal(np.asarray(ours), np.asarray(theirs)), name


def test_predict_writes_an_overlay_video_at_the_source_frame_rate(models, tmp_path):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    proc = run_cli("predict", str(models / "float"), str(video), "--out", str(tmp_path / "out"), check=True)
    assert "5 frames at 12.0 fps" in proc.stdout
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    capture.release()
    missing = run_cli("predict", str(models / "float"), str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o2"))
    assert missing.returncode == 2 and "cannot open this video" in missing.stderr
