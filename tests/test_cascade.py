"""PSPNet, ICNet and multi-head models (issue 19 items 1-4): the heads' weighted loss against a
hand-computed one, training-only heads that train, prune and then leave (quantization,
export), and two-stage initialisation of ICNet from a PSPNet by tensor names."""

import copy

import onnx
import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_batchnorm
from edgeseg.compress.prune import hard_prune, plan_pruning, soft_prune
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.data.classes import CAMVID
from edgeseg.errors import ConfigError
from edgeseg.export.onnx import export_onnx
from edgeseg.models import create_model, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.pipeline import load_recipe, run_pipeline
from edgeseg.training.losses import head_weights, multi_head_loss, pixel_loss
from edgeseg.training.pretrained import load_pretrained

from test_pipeline import write_recipe

TINY = {"icnet": {"filter_scale": 0.125}, "pspnet": {"width": 0.125}}


def tiny(name: str, **args) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(create_model(name, 11, **{**TINY[name], **args}))


def test_head_loss_is_the_weighted_sum_of_upsampled_heads():
    model = tiny("icnet").train()
    criterion = pixel_loss(None, 255, None, 1 / 16)
    images, labels = torch.randn(2, 3, 64, 96), torch.randint(0, 11, (2, 64, 96))
    labels[0, :8] = 255
    weights = head_weights(model, {"sub4": 0.25})
    assert weights == {"main": 1.0, "sub24": 0.4, "sub4": 0.25}
    torch.manual_seed(1)
    loss, main = multi_head_loss(model, images, labels, criterion, weights)
    heads = model(images, heads=True)
    expected = sum(w * F.cross_entropy(F.interpolate(heads[n], size=(64, 96), mode="bilinear", align_corners=False),
                                       labels, ignore_index=255) for n, w in weights.items())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(main, heads["main"])
    main_only, _ = multi_head_loss(model, images, labels, criterion, {"main": 1.0, "sub24": 0.0, "sub4": 0.0})
    torch.testing.assert_close(main_only, F.cross_entropy(model(images), labels, ignore_index=255))
    with pytest.raises(ConfigError, match="loss.head_weights: 'aux' is no output head of this model .*main, sub24, sub4"):
        head_weights(model, {"aux": 1.0})


@pytest.mark.parametrize("name", ["icnet", "pspnet"])
def test_pruning_follows_the_auxiliary_heads(name):
    model = tiny(name).eval()
    x = torch.randn(1, 3, 64, 96)
    soft, plan = copy.deepcopy(model), None
    plan = plan_pruning(soft, 0.5)
    soft_prune(plan)
    hard = copy.deepcopy(model)
    hard_prune(hard, plan_pruning(hard, 0.5))
    with torch.no_grad():
        soft_heads, hard_heads = soft(x, heads=True), hard(x, heads=True)
    assert set(soft_heads) == set(model.head_weights) and len(soft_heads) > 1
    for head in soft_heads:
        torch.testing.assert_close(hard_heads[head], soft_heads[head], rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in hard.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_quantization_drops_the_training_heads_and_export_has_one_output(tmp_path):
    model = tiny("icnet").eval()
    source = save_model_dir(model, model_config_for(model, CAMVID, (64, 96)), tmp_path / "m")
    assert load_model_dir(source).config.auxiliary_heads
    images = [torch.randn(3, 64, 96) for _ in range(2)]
    quantize_model_dir(source, tmp_path / "q", QuantizeConfig(calibration_batches=2), images)
    quantized = load_model_dir(tmp_path / "q")
    assert not quantized.config.auxiliary_heads and not quantized.model.has_auxiliary_heads
    assert not any("classifier" in name and "cff" in name for name, _ in quantized.model.named_parameters())
    assert list(quantized.model(torch.randn(1, 3, 64, 96), heads=True)) == ["main"]
    export_onnx(source, tmp_path / "m.onnx", False, (64, 96), [(images[0], None)])
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert [output.name for output in graph.output] == ["logits"]
    assert not any("cff24.classifier" in init.name for init in graph.initializer)


def test_icnet_starts_from_a_pspnet_by_tensor_names(tmp_path):
    psp = tiny("pspnet")
    path = save_model_dir(psp, model_config_for(psp, CAMVID, (64, 96)), tmp_path / "psp")
    icnet = tiny("icnet")
    copied, unmatched = load_pretrained(icnet, str(path))
    backbone = [k for k in icnet.state_dict() if k.startswith("backbone.")]
    matched = set(icnet.state_dict()) - set(unmatched)
    assert copied == len(matched) and matched == {*backbone, "classifier.conv.bias"}  # same name, same shape
    assert all(torch.equal(icnet.state_dict()[k], psp.state_dict()[k]) for k in backbone)
    assert any(k.startswith("cff24.") for k in unmatched) and any(k.startswith("sub1.") for k in unmatched)


def test_two_stage_recipe_pspnet_then_icnet(tmp_path):
    recipe = {"name": "cascade", "train": {
        "data": {"spec": "synthetic:8", "num_workers": 0}, "augment": {"crop": [64, 96]}, "epochs": 1,
        "batch_size": 4, "eval_every": 1, "tensorboard": False},
        "report": {"latency_runs": 1},
        "stages": {"psp": {"stage": "train", "train": {"model": {"name": "pspnet", "args": TINY["pspnet"]}}},
                   "icnet": {"stage": "train", "init": "weights", "train": {
                       "model": {"name": "icnet", "args": TINY["icnet"]}, "loss": {"head_weights": {"sub4": 0.2}}}}}}
    lines = []
    loaded, stages = load_recipe(write_recipe(tmp_path, recipe))
    report = run_pipeline(loaded, stages, log=lines.append)
    assert [row["stage"] for row in report["stages"]] == ["01-psp", "02-icnet"]
    assert any(line.startswith("pretrained: ") and "matched by name and shape" in line for line in lines)
    assert any(line == "loss: 1 x main + 0.4 x sub24 + 0.2 x sub4" for line in lines)
    final = load_model_dir(tmp_path / "pipeline" / "stages" / "02-icnet" / "model")
    assert final.config.architecture == "icnet" and final.config.auxiliary_heads
