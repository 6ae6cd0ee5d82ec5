"""Registry, blocks and model directories."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_batchnorm
from edgeseg.data.classes import CAMVID
from edgeseg.errors import ModelError
from edgeseg.models import create_model, list_models, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.blocks import ConvBNAct, Upsample
from edgeseg.models.zoo import tiny_variant_args


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward_and_shape(name):
    model = create_model(name, num_classes=5, **tiny_variant_args(name))
    stride = model.output_stride
    x = torch.randn(2, 3, 2 * stride, 3 * stride, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, 2 * stride, 3 * stride)
    heads = model(x, heads=True)
    assert list(heads)[0] == "main" and set(heads) == set(model.head_weights)
    sum(head.mean() for head in heads.values()).backward()  # training-only heads included
    assert x.grad is not None and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():  # in eval mode (no dropout) the main head is what forward returns
        assert torch.equal(model.eval()(x, heads=True)["main"], model(x))


@pytest.mark.parametrize("name", list_models())
def test_every_model_round_trips_through_a_model_dir(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(name, num_classes=CAMVID.num_classes, **tiny_variant_args(name)).eval())
    size = 2 * model.output_stride
    path = save_model_dir(model, model_config_for(model, CAMVID, (size, size)), tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == name and config["classes"][0] == "sky" and config["output_stride"] >= 1
    loaded = load_model_dir(path)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))


def test_logits_resize_runs_in_float32_nchw_under_bfloat16_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(x.float(), scale_factor=4, mode="bilinear", align_corners=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, inner = Upsample(4, logits=True)(x), Upsample(4)(x)
    assert logits.dtype == torch.float32 and logits.is_contiguous()
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert inner.dtype == torch.bfloat16
    model = create_model("swiftnet", num_classes=5).eval().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32 and out.is_contiguous()


def test_input_not_divisible_by_output_stride_is_a_clear_error():
    model = create_model("basic_encdec", num_classes=3)
    with pytest.raises(ValueError, match="not divisible by the model's output stride 8"):
        model(torch.randn(1, 3, 30, 32))


def test_registry_errors_name_the_problem():
    with pytest.raises(ModelError, match="unknown model 'basic_encdc' \\(did you mean 'basic_encdec'"):
        create_model("basic_encdc", 3)
    with pytest.raises(ModelError, match="has no argument 'widht'"):
        create_model("basic_encdec", 3, widht=8)


def test_conv_bn_act_block_without_bn_has_bias():
    block = ConvBNAct(4, 8, bn=False, act="none")
    assert block.conv.bias is not None and isinstance(block.bn, torch.nn.Identity)


def test_broken_model_dirs_give_one_line_errors(tmp_path):
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes)
    path = save_model_dir(model, model_config_for(model, CAMVID, (64, 64)), tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["arguments"] = {"width": 8}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="weights do not fit 'basic_encdec'"):
        load_model_dir(path)
    config["colour"] = 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config\.json: unknown key 'colour'"):
        load_model_dir(path)
    with pytest.raises(ModelError, match="model directory not found"):
        load_model_dir(tmp_path / "nope")


def test_subnormal_weights_are_stored_as_zeros_without_changing_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("basic_encdec", CAMVID.num_classes, width=8).eval()
    randomize_batchnorm(model)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 1e-40  # subnormal in float32
        conv.weight[0, 0, 0, 1] = -3e-39
    image = torch.randn(1, 3, 64, 64)
    expected = model(image)
    save_model_dir(model, model_config_for(model, CAMVID, (64, 64)), tmp_path / "m")
    loaded = load_model_dir(tmp_path / "m").model
    weight = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert weight[0, 0, 0, 0] == 0 and weight[0, 0, 0, 1] == 0
    assert conv.weight[0, 0, 0, 0] == 1e-40, "saving must not change the model it saves"
    assert torch.allclose(loaded(image), expected, atol=1e-6)
