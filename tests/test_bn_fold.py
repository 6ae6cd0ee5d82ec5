"""BN folding: exact on every registered model, zeros kept, loads and trains without BN."""

import pytest
import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights

from conftest import needs_camvid, randomize_batchnorm, run_cli_here as run_cli
from edgeseg.compress.bn_fold import fold_batchnorm
from edgeseg.data.classes import CAMVID
from edgeseg.models import create_model, list_models, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.blocks import ConvBNAct
from edgeseg.models.profile import zero_weight_count
from edgeseg.models.zoo import tiny_variant_args


def trained_looking(name: str, seed: int = 0) -> torch.nn.Module:
    """A model whose BNs hold non-trivial statistics and whose convs hold some exact zeros."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model(name, num_classes=CAMVID.num_classes, **tiny_variant_args(name)).eval())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) > 0.5)
    return model


@pytest.mark.parametrize("name", list_models())
def test_folding_is_exact_keeps_zeros_and_leaves_no_batchnorm(name):
    model = trained_looking(name)
    size = 2 * model.output_stride
    x = torch.randn(2, 3, size, size + model.output_stride)
    with torch.no_grad():
        before = model(x)
    zeros = zero_weight_count(model)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    result = fold_batchnorm(model)
    with torch.no_grad():
        after = model(x)
    assert result.folded_into_conv + result.made_affine == batchnorms  # every one, or none in a net without BN
    assert result.folded_into_conv > 0 or batchnorms == 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert (after - before).abs().max() <= 1e-5 * max(1.0, before.abs().max())
    assert zero_weight_count(model) >= zeros


def test_folded_conv_matches_torch_reference_fusion():
    block = ConvBNAct(8, 16, 3, groups=2).eval()
    with torch.no_grad():
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        block.bn.weight.uniform_(-2, 2)
        block.bn.bias.uniform_(-1, 1)
    bn = block.bn
    ref_w, ref_b = fuse_conv_bn_weights(block.conv.weight, None, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    wrapper = torch.nn.Sequential(block)
    fold_batchnorm(wrapper)
    assert torch.allclose(block.conv.weight, ref_w, atol=1e-6) and torch.allclose(block.conv.bias, ref_b, atol=1e-6)


@pytest.mark.parametrize("name", ["swiftnet", "edanet"])
def test_folded_model_dir_reloads_identically_and_trains(name, tmp_path):
    model = trained_looking(name)
    fold_batchnorm(model)
    size = 2 * model.output_stride
    config = model_config_for(model, CAMVID, (size, size)).model_copy(update={"batchnorm_folded": True})
    loaded = load_model_dir(save_model_dir(model, config, tmp_path / "folded")).model
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.1)
    loss = loaded(x).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in loaded.parameters())


@needs_camvid
def test_fold_bn_command_on_real_images(tmp_path):
    model = trained_looking("swiftnet")
    save_model_dir(model, model_config_for(model, CAMVID, (352, 480)), tmp_path / "dense")
    result = run_cli("fold-bn", str(tmp_path / "dense"), "--out", str(tmp_path / "folded"),
                     "--data", "camvid:../shared/data/camvid", "--check-images", "2", check=True)
    assert "max |logit difference|" in result.stdout
    folded = load_model_dir(tmp_path / "folded")
    history = folded.config.history[-1].model_dump()
    assert history["stage"] == "fold-bn" and history["check_images"] == 2
    assert history["max_abs_diff"] < 1e-4 and history["zeros_after"] >= history["zeros_before"] > 0
    again = run_cli("fold-bn", str(tmp_path / "folded"), "--out", str(tmp_path / "twice"))
    assert again.returncode == 2 and "already folded" in again.stderr
