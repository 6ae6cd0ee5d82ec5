"""Quantization: grids against hand computations, calibration, model directories, QAT."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_batchnorm

from edgeseg.compress.quant.graph import activation_quantizers
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.compress.quant.bias_correction import correct_biases, input_channel_means
from edgeseg.compress.quant.graph import quantization_points
from edgeseg.models.quantizers import ActivationQuantizer, WeightQuantizer, affine_grid, power_of_two_grid
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.compress.sample_images import real_check_images
from edgeseg.data.spec import open_source
from edgeseg.models.blocks import ConvBNAct
from edgeseg.models import create_model, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.profile import profile_model, trainable_convs

SPEC = "synthetic:8"


def float_model_dir(path, seed=0, zero_fraction=0.3):
    """A small swiftnet with BN statistics and some exact zero weights, as a model directory."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model("swiftnet", 11, width=0.125, decoder=16)).eval()
    with torch.no_grad():
        for _, conv in trainable_convs(model):
            conv.weight[torch.rand_like(conv.weight) < zero_fraction] = 0.0
    save_model_dir(model, model_config_for(model, open_source(SPEC).classes, (64, 96)), path)
    return path


def test_power_of_two_grid_is_the_seed_dynamic_fixed_point():
    # IL = ceil(log2 max|x|) + sign bit, fl = bits - IL
    g = power_of_two_grid(0.75, 8, signed=True, unsigned_storage=False)
    assert (g.fraction_length, g.scale, g.qmin, g.qmax, g.zero_point) == (7, 1 / 128, -128, 127, 0)
    g = power_of_two_grid(3.0, 8, signed=False, unsigned_storage=False)
    assert (g.fraction_length, g.scale, g.qmin, g.qmax) == (6, 1 / 64, 0, 255)
    g = power_of_two_grid(5.0, 8, signed=True, unsigned_storage=True)  # IL = 3 + 1
    assert (g.fraction_length, g.zero_point, g.qmin, g.qmax) == (4, 128, 0, 255)
    assert power_of_two_grid(1.0, 8, signed=True, unsigned_storage=False).fraction_length == 7


def test_affine_grid_represents_zero_exactly():
    g = affine_grid(-0.3, 1.7, 8)
    assert g.scale == pytest.approx(2.0 / 255)
    assert g.zero_point == round(0.3 / g.scale) == 38
    x = torch.tensor([0.0, -0.3, 1.7, 5.0])
    q = torch.fake_quantize_per_tensor_affine(x, g.scale, g.zero_point, g.qmin, g.qmax)
    assert q[0] == 0.0 and q[3] == pytest.approx((255 - 38) * g.scale)


@pytest.mark.parametrize("scheme", ["float", "power-of-two"])
def test_weights_land_on_their_grid_within_the_x86_range_and_zeros_stay(scheme):
    torch.manual_seed(1)
    weight = torch.randn(16, 8, 3, 3) * torch.linspace(0.01, 2, 16).view(-1, 1, 1, 1)
    weight[weight.abs() < 0.2] = 0.0
    quantizer = WeightQuantizer(QuantizeConfig(scheme=scheme, target="x86"))
    quantized = quantizer(weight)
    scales = quantizer.scales(weight).view(-1, 1, 1, 1)
    levels = quantized / scales
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.round().abs().max() <= 63 and quantizer.qmax == 63
    assert bool((quantized[weight == 0] == 0).all())
    if scheme == "float":  # per channel: the largest weight of every (non-zero) channel is level 63
        peaks = levels.abs().flatten(1).amax(1)
        alive = weight.flatten(1).abs().amax(1) > 0
        assert torch.allclose(peaks[alive], torch.full((int(alive.sum()),), 63.0), atol=1e-3)
        assert bool((peaks[~alive] == 0).all())
    else:  # one power-of-two scale for the tensor
        assert len(set(scales.flatten().tolist())) == 1
        assert math.log2(float(scales.flatten()[0])).is_integer()
    full = WeightQuantizer(QuantizeConfig(scheme=scheme, target="full-range"))
    assert full.qmax == 127 and (full(weight) / full.scales(weight).view(-1, 1, 1, 1)).round().abs().max() > 63


def test_activation_ranges_follow_an_ema_then_freeze():
    quantizer = ActivationQuantizer(QuantizeConfig(ema_momentum=0.9))
    quantizer.calibrating = True
    quantizer(torch.tensor([-1.0, 2.0]))
    quantizer(torch.tensor([-3.0, 4.0]))
    assert float(quantizer.min_val) == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert float(quantizer.max_val) == pytest.approx(0.9 * 2 + 0.1 * 4)
    quantizer.calibrating = False
    quantizer.enabled.fill_(1)
    quantizer.train()
    quantizer(torch.tensor([-30.0, 40.0]))  # frozen: no change
    assert float(quantizer.max_val) == pytest.approx(2.2)
    x = torch.tensor([0.5, 100.0], requires_grad=True)
    quantizer(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]  # straight through inside the range, zero outside


def test_tracking_quantizer_keeps_learning_ranges_in_training():
    quantizer = ActivationQuantizer(QuantizeConfig(freeze_ranges=False, ema_momentum=0.5))
    quantizer.enabled.fill_(1)
    quantizer.observe(torch.tensor([0.0, 1.0]))
    quantizer.train()
    quantizer(torch.tensor([0.0, 3.0]))
    assert float(quantizer.max_val) == pytest.approx(2.0)


def test_points_cover_every_merge_and_leave_the_output_float():
    model = create_model("swiftnet", 11, width=0.125, decoder=16)
    points, follow, first = quantization_points(model, (64, 64))
    assert "stage1.0.add" in points and "context.concat" in points and "stage1.0.act" in points
    assert "upsample" not in points  # the final x4 resize produces the logits
    assert follow["up16.upsample"] == "context.fuse" and "context.upsample" not in follow  # shared by 4 branches
    assert first == ["stem.0"]


@pytest.mark.parametrize("scheme", ["float", "power-of-two"])
def test_quantized_model_dir_rebuilds_exactly_and_keeps_zeros(tmp_path, scheme):
    source = float_model_dir(tmp_path / "float")
    images = real_check_images(source, SPEC, "train", 4, spread=True)
    metrics = quantize_model_dir(source, tmp_path / "q", QuantizeConfig(scheme=scheme, calibration_batches=4), images)
    assert metrics["zeros_revived"] == 0 and metrics["zeros_after"] >= metrics["zeros_before"] > 0
    assert metrics["batchnorms_folded_here"] > 0 and metrics["calibration_images"] == 4
    loaded = load_model_dir(tmp_path / "q")
    assert loaded.config.batchnorm_folded and loaded.config.quantization.spec.scheme == scheme
    profile = profile_model(loaded.model, (64, 96))  # sees every conv through the quantized path
    assert sum(layer.zeros for layer in profile.layers) == metrics["zeros_after"]
    quantizers = dict(activation_quantizers(loaded.model))
    assert "input" in quantizers and all(bool(q.enabled) for q in quantizers.values())
    image = torch.nn.functional.pad(images[0], (0, 0, 0, 16))[None]
    float_out = load_model_dir(source).model(image)
    with torch.no_grad():
        first, second = loaded.model(image), load_model_dir(tmp_path / "q").model(image)
    assert torch.equal(first, second)
    agreement = (first.argmax(1) == float_out.argmax(1)).float().mean()
    assert agreement > 0.97
    snapshot = json.loads((tmp_path / "q" / "snapshot_log.json").read_text())
    convs = {row["name"]: row for row in snapshot["convs"]}
    assert convs["stem.0"]["input"] == "input" and convs["stage1.0.conv2"]["input"] == "stage1.0.conv1"
    if scheme == "power-of-two":
        assert all(row["shift_ok"] is not None for row in convs.values() if row["output"])
    assert "shift ok" in (tmp_path / "q" / "snapshot_log.txt").read_text()


def test_bias_correction_restores_each_channels_mean_output():
    torch.manual_seed(0)
    block = ConvBNAct(8, 6, 3, groups=2, bn=False, act="none")
    model = torch.nn.Sequential(block)
    channel_means = torch.linspace(0.2, 3.0, 8).view(1, 8, 1, 1)  # positive, as after a ReLU; distinct per channel
    images = [torch.rand(1, 8, 48, 48) + channel_means for _ in range(4)]
    x = torch.cat(images)
    means = input_channel_means(model, images)
    assert torch.allclose(means["0"], x.double().mean(dim=(0, 2, 3)))
    float_weight, float_bias = block.conv.weight.detach().clone(), block.conv.bias.detach().clone()
    block.weight_quantizer = WeightQuantizer(QuantizeConfig(scheme="power-of-two", weight_bits=4))
    with torch.no_grad():
        block.conv.weight.copy_(block.weight_quantizer.bake(block.conv.weight))

    def interior_mean(weight, bias):  # away from the zero-padded border
        return F.conv2d(x, weight, bias, padding=1, groups=2)[..., 1:-1, 1:-1].mean(dim=(0, 2, 3))

    target = interior_mean(float_weight, float_bias)
    shift_before = (interior_mean(block.conv.weight, block.conv.bias) - target).abs()
    assert correct_biases(model, {"0": float_weight}, means) == 1
    shift_after = (interior_mean(block.conv.weight, block.conv.bias) - target).abs()
    assert shift_before.min() > 1e-2 and torch.all(shift_after < 0.05 * shift_before)


def test_post_training_quantization_corrects_biases_unless_told_not_to(tmp_path):
    source = float_model_dir(tmp_path / "float")
    images = real_check_images(source, SPEC, "train", 2)
    results = {}
    for correct in (True, False):
        config = QuantizeConfig(scheme="power-of-two", calibration_batches=2, bias_correction=correct)
        metrics = quantize_model_dir(source, tmp_path / str(correct), config, images)
        results[correct] = metrics, dict(load_model_dir(tmp_path / str(correct)).model.named_parameters())
    (with_metrics, corrected), (without_metrics, plain) = results[True], results[False]
    convs = len(list(trainable_convs(load_model_dir(source).model)))
    assert with_metrics["biases_corrected"] == convs and without_metrics["biases_corrected"] == 0
    weights = [name for name in plain if name.endswith("conv.weight")]
    biases = [name for name in plain if name.endswith("conv.bias")]
    assert weights and all(torch.equal(corrected[name], plain[name]) for name in weights)
    assert sum(not torch.equal(corrected[name], plain[name]) for name in biases) == convs


def test_float_first_layer_keeps_the_image_and_first_conv_in_float(tmp_path):
    source = float_model_dir(tmp_path / "float")
    images = real_check_images(source, SPEC, "train", 2)
    quantize_model_dir(source, tmp_path / "q", QuantizeConfig(quantize_first_layer=False, calibration_batches=2), images)
    loaded = load_model_dir(tmp_path / "q")
    assert loaded.config.quantization.float_layers == ["stem.0"]
    assert loaded.model.stem[0].weight_quantizer is None and loaded.model.stem[1].weight_quantizer is not None
    assert "input" not in dict(activation_quantizers(loaded.model))


def test_quantizing_twice_or_unfoldable_is_refused(tmp_path):
    from edgeseg.errors import ModelError

    source = float_model_dir(tmp_path / "float")
    images = real_check_images(source, SPEC, "train", 1)
    quantize_model_dir(source, tmp_path / "q", QuantizeConfig(calibration_batches=1), images)
    with pytest.raises(ModelError, match="already quantized"):
        quantize_model_dir(tmp_path / "q", tmp_path / "q2", QuantizeConfig(), images)


@pytest.mark.slow
def test_quantization_aware_finetuning_trains_the_quantized_model_with_frozen_zeros(tmp_path):
    from edgeseg.layout import LAST_DIR, STAGE_RUN, WEIGHTS_NAME
    from edgeseg.pipeline.specs import QuantizeStage
    from edgeseg.pipeline.stages import StageContext, run_stage

    source = float_model_dir(tmp_path / "float")
    finetune = {"epochs": 2, "batch_size": 2, "augment": {"crop": [64, 96]}, "data": {"num_workers": 0},
                "tensorboard": False}
    quant = QuantizeConfig(scheme="power-of-two", stochastic_rounding=True, calibration_batches=2)
    spec = QuantizeStage(quantization=quant, train=finetune, keep="last")
    context = StageContext(work_dir=tmp_path / "work", data=SPEC, log=lambda _: None)
    details = run_stage(spec, source, tmp_path / "qat", context).metrics
    assert details["finetune_epochs"] == 2 and 0 <= details["best_val_miou"] <= 1 and details["kept"] == "last"
    last = tmp_path / "work" / STAGE_RUN / LAST_DIR / WEIGHTS_NAME  # handed on whatever the scored split said
    assert (tmp_path / "qat" / WEIGHTS_NAME).read_bytes() == last.read_bytes()
    ptq = load_model_dir(tmp_path / "work" / "ptq").model
    qat = load_model_dir(tmp_path / "qat")
    assert qat.config.quantization is not None and qat.config.batchnorm_folded
    changed = False
    for (name, before), (_, after) in zip(trainable_convs(ptq), trainable_convs(qat.model)):
        assert bool((after.weight[before.weight == 0] == 0).all()), name
        changed |= not torch.equal(before.weight, after.weight)
    assert changed
