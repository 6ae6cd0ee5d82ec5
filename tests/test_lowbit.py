"""Blueoil's low-bit scheme: quantizers against its formulas, LmSegNet against its published
size, from-scratch training against a hand-written forward pass, and the int8 engine against
the converted model."""

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_batchnorm, run_cli_here as run_cli

from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.models.quantized import attach_quantizers
from edgeseg.compress.quant.graph import bake_weights, low_bit_layout
from edgeseg.compress.quant.lowbit import fold_low_bit
from edgeseg.models.quantizers import ActivationQuantizer, WeightQuantizer
from edgeseg.errors import ConfigError
from edgeseg.export.onnx import to_onnx
from edgeseg.export.onnx_graph import clip_activation_levels, fold_weight_quantization, quantize_conv_biases
from edgeseg.models import create_model, load_model_dir
from edgeseg.models.profile import profile_model
from edgeseg.schema import validate
from edgeseg.training.config import load_train_config
from edgeseg.training.loop import train

LOW_BIT = QuantizeConfig(scheme="low-bit")


def low_bit_lmsegnet(seed=0, width=0.25, size=(32, 48)):
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model("lmsegnet_v1", 11, width=width)).eval()
    points, follow, float_layers = low_bit_layout(model, size)
    return attach_quantizers(model, LOW_BIT, points, follow, float_layers)


def test_low_bit_config_defaults_and_errors():
    assert (LOW_BIT.weight_bits, LOW_BIT.activation_bits, LOW_BIT.quantize_first_layer) == (1, 2, False)
    with pytest.raises(ValueError, match="1-bit weights"):
        QuantizeConfig(scheme="low-bit", weight_bits=8)
    with pytest.raises(ValueError, match="low-bit scheme"):
        QuantizeConfig(scheme="float", weight_bits=1)
    with pytest.raises(ConfigError, match=r"^quantize options: the low-bit scheme has 1-bit weights \(weight_bits: 1\)$"):
        validate(QuantizeConfig, {"scheme": "low-bit", "weight_bits": 8}, "quantize options")


def test_binary_weights_are_sign_times_mean_abs_with_identity_gradient():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3, requires_grad=True)
    quantized = WeightQuantizer(LOW_BIT)(weight)
    w = weight.detach().numpy()
    np.testing.assert_allclose(quantized.detach().numpy(), np.sign(w) * np.abs(w).mean(), rtol=1e-6)
    upstream = torch.randn_like(weight)
    (quantized * upstream).sum().backward()
    assert torch.equal(weight.grad, upstream)


def test_two_bit_activations_follow_blueoil_linear_mid_tread_half():
    quantizer = ActivationQuantizer(LOW_BIT)
    quantizer.enabled.fill_(1)
    x = torch.linspace(-1.0, 3.0, 4001)[1:-1].requires_grad_(True)
    x = x[(x * 1.5 - 0.5).frac().abs() > 1e-3].detach().requires_grad_(True)  # no exact rounding ties
    y = quantizer(x)
    v = x.detach().numpy()
    expected = np.round(np.clip(v, 0, 2) / 2 * 3) / 3 * 2  # Blueoil: round(clip(x, 0, 2) / 2 * 3) / 3 * 2
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-6)
    assert set(np.round(expected * 3 / 2).astype(int).tolist()) == {0, 1, 2, 3}
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), ((v > 0) & (v < 2)).astype(np.float32))


def test_lmsegnet_v1_has_blueoils_size():
    model = create_model("lmsegnet_v1", 11)
    profile = profile_model(model, (360, 480))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.56e6, rel=0.01)
    assert profile.macs * 2 == pytest.approx(23.4e9, rel=0.01)  # 23.4 GFLOP at 360x480 (REFERENCE.md 3)
    assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 11, 48, 64)


def test_low_bit_layout_keeps_the_first_layer_and_classifier_float():
    model = create_model("lmsegnet_v1", 11, width=0.25)
    points, follow, float_layers = low_bit_layout(model, (32, 48))
    assert float_layers == ["classifier", "encoder.1"]
    blocks = [p for p in points if p not in follow]
    assert len(blocks) == 10 and "classifier" not in points  # every ReLU block; the logits stay float
    assert follow == {"encoder.2": "encoder.1", "encoder.5": "encoder.4", "decoder.0": "encoder.9",
                      "decoder.2": "decoder.1", "decoder.4": "decoder.3"}


def reference_forward(model, x):
    """LmSegnetV1Quantize written out with plain functional calls: float first conv, binary
    convs (sign x mean|W|), BN in eval mode, 2-bit activations, a float classifier."""
    def act(y):
        return torch.round(torch.clamp(y, 0, 2) / 2 * 3) / 3 * 2

    def block(module, y, binary):
        w = module.conv.weight
        w = torch.sign(w) * w.abs().mean() if binary else w
        y = F.conv2d(y, w, None, module.conv.stride, module.conv.padding, module.conv.dilation, module.conv.groups)
        bn = module.bn
        return act(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    y = x
    for index, layer in enumerate([*model.encoder, *model.decoder]):
        if hasattr(layer, "conv"):
            y = block(layer, y, binary=index != 1)
        else:
            y = layer(y)
    c = model.classifier.conv
    return F.conv2d(y, c.weight, c.bias, padding=c.padding)


def test_low_bit_training_from_scratch_saves_a_model_that_matches_a_hand_written_forward(tmp_path):
    config = load_train_config(None, [
        "model.name=lmsegnet_v1", "model.args={width: 0.25}", "quantize={scheme: low-bit}", "epochs=1",
        "data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "data.num_workers=0",
        "tensorboard=false", f"runs_dir={tmp_path}"])
    result = train(config, log=lambda _: None)
    loaded = load_model_dir(result.run_dir / "best")
    assert loaded.config.quantization.spec.scheme == "low-bit" and not loaded.config.batchnorm_folded
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model(x).numpy(), reference_forward(loaded.model, x).numpy(), atol=1e-4)


def test_training_quantized_from_scratch_needs_the_low_bit_scheme(tmp_path):
    config = load_train_config(None, ["quantize={scheme: float}", "data.spec=synthetic:8", f"runs_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="quantize.scheme"):
        train(config, log=lambda _: None)


def engine_outputs(model, x, optimization):
    proto = to_onnx(copy.deepcopy(model), tuple(x.shape[-2:]))
    fold_weight_quantization(proto)
    quantize_conv_biases(proto)
    clip_activation_levels(proto, 3)
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.optimized_model_filepath = ""
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0], proto


@pytest.mark.parametrize("seed", [0, 1])
def test_converted_low_bit_model_is_what_onnx_runtime_computes_with_integer_kernels(seed, tmp_path):
    model = low_bit_lmsegnet(seed)
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        trained = model(x)
    binary = fold_low_bit(model, (32, 48))
    bake_weights(model)
    assert binary == 9 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        converted = model(x).numpy()
    agreement = (converted.argmax(1) == trained.numpy().argmax(1)).mean()
    assert agreement > 0.9, "only int32 bias rounding separates the converted model from the trained one"
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        logits, proto = engine_outputs(model, x, level)
        np.testing.assert_allclose(logits, converted, atol=1e-4)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert len(weights) == 9 and all(set(np.unique(np.abs(w))) <= {0, 127} for w in weights.values())
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kernels = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert kernels.count("QLinearConv") == 9 and kernels.count("Conv") == 2  # the float first layer and classifier


def test_quantize_cli_low_bit_then_export_int8(tmp_path):
    torch.manual_seed(0)
    from edgeseg.data.spec import open_source
    from edgeseg.models import model_config_for, save_model_dir

    model = randomize_batchnorm(create_model("lmsegnet_v1", 11, width=0.25)).eval()
    source = save_model_dir(model, model_config_for(model, open_source("synthetic:8").classes, (64, 96)), tmp_path / "f")
    run_cli("quantize", str(source), "--out", str(tmp_path / "q"), "--scheme", "low-bit", "--data", "synthetic:8",
            "--calibration-batches", "2", check=True)
    loaded = load_model_dir(tmp_path / "q")
    spec = loaded.config.quantization
    assert spec.spec.weight_bits == 1 and spec.spec.activation_bits == 2
    snapshot = json.loads((tmp_path / "q" / "snapshot_log.json").read_text())
    assert {(row["bits"], round(row["scale"], 6), row["zero_point"]) for row in snapshot["tensors"]} == {(2, 0.666667, 0)}
    assert {row["weight_bits"] for row in snapshot["convs"]} == {1}
    proc = run_cli("export", str(tmp_path / "q"), "--format", "onnx-int8", "--out", str(tmp_path / "q.onnx"),
                   "--size", "240", "320", "--data", "synthetic:8", "--min-agreement", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "pixel agreement" in proc.stdout and (tmp_path / "q.onnx").is_file()


def test_low_bit_refuses_a_model_with_folded_batchnorms(tmp_path):
    from edgeseg.compress.bn_fold import fold_model_dir
    from edgeseg.compress.quant.stage import quantize_model_dir
    from edgeseg.data.spec import open_source
    from edgeseg.errors import ModelError
    from edgeseg.models import model_config_for, save_model_dir

    model = create_model("lmsegnet_v1", 11, width=0.25)
    save_model_dir(model, model_config_for(model, open_source("synthetic:8").classes, (32, 48)), tmp_path / "f")
    fold_model_dir(tmp_path / "f", tmp_path / "folded")
    with pytest.raises(ModelError, match="BatchNorms are folded"):
        quantize_model_dir(tmp_path / "folded", tmp_path / "q", LOW_BIT, [torch.zeros(3, 32, 48)])
