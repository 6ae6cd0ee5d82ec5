"""Portable ONNX: constant pyramid-pooling matrices, onnxscript's optimizer, OpenCV DNN reading
every architecture's fp32 export as ONNX Runtime does, dynamic height and width, and metadata
any reader can use (plain strings, no local paths)."""

import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from conftest import error_line, randomize_batchnorm, run_cli_here as run_cli

from edgeseg.data.classes import ClassInfo
from edgeseg.export import opencv_check
from edgeseg.export.onnx import ExportCheckError, export_onnx, to_onnx
from edgeseg.export.onnx_graph import optimize_graph
from edgeseg.predict.metadata import read_metadata
from edgeseg.export.opencv_check import OpenCVLoadError, compare_with_opencv
from edgeseg.predict.predictors import OnnxPredictor, TorchPredictor
from edgeseg.models import create_model, list_models, model_config_for, save_model_dir
from edgeseg.models.blocks import AdaptiveAvgPool, averaging_matrix

TINY = {"basic_encdec": {"width": 8}, "dabnet": {"width": 0.25, "blocks": (1, 2)}, "edanet": {"width": 0.25},
        "fcn_alexnet": {"width": 0.0625},
        "jacintonet11_seg": {"width": 0.25}, "lmsegnet_v1": {"width": 0.25},
        "swiftnet": {"width": 0.125, "decoder": 16}}
SIZE = (64, 96)
CLASSES = ClassInfo(("sky", "road", "car", "tree"), ((128, 128, 128), (128, 64, 128), (64, 0, 128), (128, 128, 0)))
HISTORY = [{"stage": "start", "model": "/abs/runs/camvid/best"},
           {"stage": "train", "config": "camvid", "data": "camvid:/abs/data/CamVid"}]


def tiny_model_dir(path, arch):
    """A tiny random-weight ``arch`` with trained-looking BatchNorm statistics, as a model
    directory whose history holds absolute paths."""
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(arch, CLASSES.num_classes, **TINY.get(arch, {}))).eval()
    save_model_dir(model, model_config_for(model, CLASSES, SIZE, history=HISTORY), path)
    return path


def check_images(count=2):
    """Normalised random images; the second one smaller than the export size (padded)."""
    torch.manual_seed(1)
    sizes = [SIZE, (SIZE[0] - 5, SIZE[1] - 7)][:count]
    return [(torch.randn(3, *hw), None) for hw in sizes]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every registered architecture exported in fp32: {name: (model dir, file, metrics)}."""
    root = tmp_path_factory.mktemp("portable")
    result = {}
    for arch in list_models():
        source = tiny_model_dir(root / arch, arch)
        out = root / f"{arch}.onnx"
        result[arch] = (source, out, export_onnx(source, out, False, SIZE, check_images()))
    return result


@pytest.mark.parametrize("h, w, grid", [(12, 15, 8), (3, 5, 8), (8, 8, 2), (1, 1, 4), (7, 9, 1), (17, 4, 6)])
def test_averaging_matrices_pool_as_adaptive_avg_pool2d(h, w, grid):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    pooled = averaging_matrix(h, grid, x.dtype) @ x @ averaging_matrix(w, grid, x.dtype).t()
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, grid), rtol=0, atol=1e-12)


def test_pooling_exported_for_dynamic_sizes_is_exact_at_every_size():
    pool = AdaptiveAvgPool(8)
    pool.dynamic_size = True
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(pool, (torch.zeros(1, 4, 12, 15),), buffer, input_names=["x"], opset_version=17,
                          dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for h, w in [(12, 15), (5, 23), (40, 30)]:
        x = torch.randn(1, 4, h, w)
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], F.adaptive_avg_pool2d(x, 8), atol=1e-6)


@pytest.mark.parametrize("arch", list_models())
def test_opencv_computes_every_architecture_as_onnx_runtime_does(exports, arch):
    _, out, metrics = exports[arch]
    assert metrics["opencv_agreement"] >= 0.999 and metrics["max_abs_diff"] < 1e-4
    assert metrics["nodes"] <= metrics["nodes_exported"]
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert not ops & {"Constant", "ScatterND", "Where", "Expand", "ConstantOfShape", "Range"}, ops


def test_swiftnet_pyramid_pooling_is_two_matmuls_with_constant_matrices(exports):
    proto = onnx.load(str(exports["swiftnet"][1]))
    pooling = [node for node in proto.graph.node if node.name.startswith("/context/pools")]
    assert sorted(node.op_type for node in pooling) == ["MatMul"] * 8
    initializers = {init.name for init in proto.graph.initializer}
    assert all(any(name in initializers for name in node.input) for node in pooling)


def test_opencv_disagreement_names_the_first_node_that_differs(exports, tmp_path, monkeypatch):
    """OpenCV is made to go wrong from the first conv of stage 2 on; the export must refuse and
    name that node's output."""
    source = exports["swiftnet"][0]
    original = opencv_check._forward

    def diverging(net, x, names):
        outputs = original(net, x, names)
        if names == ["logits"]:
            return [-out for out in outputs]
        first = next(i for i, name in enumerate(names) if name.startswith("/stage2/"))
        return outputs[:first] + [out + 1.0 for out in outputs[first:]]

    monkeypatch.setattr(opencv_check, "_forward", diverging)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportCheckError, match=r"not written: OpenCV DNN.*differing node output: /stage2/stage2\.0/"):
        export_onnx(source, out, False, SIZE, check_images(1))
    assert not out.exists()


def test_a_file_opencv_cannot_read_is_a_one_line_error(exports):
    source = exports["swiftnet"][0]
    from edgeseg.models import load_model_dir

    proto = optimize_graph(to_onnx(load_model_dir(source).model, SIZE, dynamic=True))
    with pytest.raises(OpenCVLoadError) as err:
        compare_with_opencv(proto, [np.zeros((1, 3, *SIZE), np.float32)], 0.999)
    assert "\n" not in str(err.value) and str(err.value)


def test_dynamic_export_runs_at_other_sizes_as_pytorch_does(exports, tmp_path):
    source = exports["swiftnet"][0]
    out = tmp_path / "dynamic.onnx"
    metrics = export_onnx(source, out, False, SIZE, check_images(), dynamic=True)
    assert metrics["sizes_checked"] == [[64, 96], [96, 128]] and metrics["max_abs_diff"] < 1e-4
    predictor = OnnxPredictor.from_file(out)
    assert predictor.size is None and read_metadata(onnx.load(str(out)))["input_size"] == "dynamic"
    reference = TorchPredictor.from_dir(source, torch.device("cpu"))
    for h, w in [(64, 96), (128, 64), (50, 70)]:
        image = torch.randn(1, 3, h, w)
        torch.testing.assert_close(predictor.logits(image), reference.logits(image), atol=1e-4, rtol=0)


def test_metadata_is_plain_text_where_scalar_and_names_no_local_path(exports):
    source, out, _ = exports["swiftnet"]
    raw = {entry.key: entry.value for entry in onnx.load(str(out)).metadata_props}
    assert raw["precision"] == "fp32" and raw["ignore_index"] == "255" and raw["output_stride"] == "32"
    assert raw["colour_order"] == "RGB" and raw["scaling"].startswith("pixel / 255, then (x - mean) / std")
    assert "64x96" in raw["padding"] and json.loads(raw["input_size"]) == [64, 96]
    assert json.loads(raw["classes"]) == list(CLASSES.names)
    config = json.loads(raw["edgeseg_config"])
    assert config["history"] == [{"stage": "start", "data": None, "model": "best"},
                                 {"stage": "train", "config": "camvid", "data": "camvid:CamVid"}]
    for value in raw.values():
        assert "/abs/" not in value and str(source.parent) not in value


def test_older_exports_with_every_value_json_encoded_still_load(exports):
    _, out, _ = exports["basic_encdec"]
    proto = onnx.load(str(out))
    for entry in proto.metadata_props:
        entry.value = json.dumps(read_metadata({entry.key: entry.value})[entry.key])
    assert read_metadata(proto)["precision"] == "fp32"
    old = OnnxPredictor.from_bytes(proto.SerializeToString())
    image = torch.randn(1, 3, 40, 50)
    torch.testing.assert_close(old.logits(image), OnnxPredictor.from_file(out).logits(image))


def test_cli_refuses_dynamic_for_fixed_size_formats(tmp_path):
    proc = run_cli("export", str(tmp_path / "model"), "--format", "bundle", "--dynamic")
    assert "dynamic: only for format onnx or onnx-int8" in error_line(proc)
