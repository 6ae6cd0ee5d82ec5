"""Sparsity during training: frozen zeros, L1, thresholding, incremental mode, lr multipliers."""

import math

import pytest
import torch

from edgeseg.compress.sparsity import SparsityConfig, SparsityControl, conv_layers, zero_fractions
from edgeseg.training.config import load_train_config
from edgeseg.training.loop import build_optimizer, train


def small_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, 3, padding=1, bias=False), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 4, 1))


def fit(net, optimizer, control, steps: int, start: int = 0) -> None:
    generator = torch.Generator().manual_seed(1)
    for step in range(start, start + steps):
        x = torch.randn(4, 3, 8, 8, generator=generator)
        loss = (net(x) - 1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if control is not None:
            control.after_step(step + 1, optimizer.param_groups[0]["lr"], {})


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
], ids=["sgd-momentum-wd", "adam-l2", "adamw"])
def test_zeros_stay_zero_under_momentum_adam_state_and_weight_decay(make_optimizer):
    net = small_net()
    optimizer = make_optimizer(net.parameters())
    fit(net, optimizer, None, 5)  # optimizer state (momentum, Adam moments) is dense now
    with torch.no_grad():
        for conv in conv_layers(net).values():
            conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    zeros = {name: conv.weight == 0 for name, conv in conv_layers(net).items()}
    before = {name: conv.weight.detach().clone() for name, conv in conv_layers(net).items()}
    control = SparsityControl(SparsityConfig(sparse=True), net)
    fit(net, optimizer, control, 30, start=5)
    for name, conv in conv_layers(net).items():
        assert (conv.weight[zeros[name]] == 0).all(), name
        assert (conv.weight[~zeros[name]] != before[name][~zeros[name]]).float().mean() > 0.9, name
        assert (conv.weight.grad[zeros[name]] == 0).all()


def test_l1_is_a_proximal_shrink_to_exact_zeros():
    net = small_net()
    conv = conv_layers(net)["2"]
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-0.1, 0.1, conv.weight.numel()).view_as(conv.weight))
    expected = conv.weight.detach().sign() * (conv.weight.detach().abs() - 0.02).clamp_min(0)
    SparsityControl(SparsityConfig(), net, l1_strength=0.2).after_step(1, lr=0.1, lr_mults={"2": 1.0})
    assert torch.allclose(conv.weight.detach(), expected, rtol=0, atol=1e-9)
    assert torch.equal(conv.weight == 0, expected == 0)
    assert float((conv.weight == 0).float().mean()) == pytest.approx(0.2, abs=0.01)


def test_threshold_weights_cuts_small_magnitudes_after_each_step():
    net = small_net()
    control = SparsityControl(SparsityConfig(threshold_weights=True, sparsity_threshold=0.03), net)
    fit(net, torch.optim.SGD(net.parameters(), lr=0.01), control, 3)
    for conv in conv_layers(net).values():
        weight = conv.weight.detach()
        assert not ((weight.abs() <= 0.03) & (weight != 0)).any()
    _, total = zero_fractions(conv_layers(net))
    assert total > 0.2


def test_incremental_mode_ramps_each_channel_to_the_target():
    net = small_net()
    config = SparsityConfig(sparsity_start_factor=0.5, sparsity_step_factor=0.1, sparsity_target=0.7,
                            sparsity_step_iter=2)
    control = SparsityControl(config, net)
    assert [control.incremental_fraction(s) for s in (1, 2, 3, 4, 6, 8)] == [None, 0.5, None, 0.6, 0.7, 0.7]
    fit(net, torch.optim.Adam(net.parameters(), lr=1e-2), control, 8)
    for conv in conv_layers(net).values():  # none is skipped: each has 32 inputs or outputs
        per_channel = (conv.weight == 0).flatten(1).float().mean(1)
        n = per_channel.new_tensor(conv.weight[0].numel())
        assert torch.allclose(per_channel, torch.floor(0.7 * n) / n)


def test_layers_at_their_target_get_the_lr_multiplier():
    net = small_net()
    with torch.no_grad():
        conv_layers(net)["2"].weight[:, :20] = 0  # 62.5 % zeros
    control = SparsityControl(SparsityConfig(sparsity_target=0.6, sparsity_lr_mult=0.01), net)
    assert control.lr_mults() == {"0": 1.0, "2": 0.01, "4": 1.0}


def test_engine_trains_sparse_with_l1_display_and_per_layer_groups(tmp_path):
    lines = []
    config = load_train_config(None, [
        "data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.args={width: 8}",
        "data.num_workers=0", "epochs=3", "eval_every=3", f"runs_dir={tmp_path}", "optimizer.regularization=l1",
        "optimizer.weight_decay=1e-3", "sparsity.sparsity_start_factor=0.5", "sparsity.sparsity_target=0.6",
        "sparsity.sparsity_step_factor=0.1", "sparsity.sparsity_step_iter=2", "sparsity.display_sparsity=2"])
    assert build_optimizer(config, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))).param_groups[0]["weight_decay"] == 0
    result = train(config, log=lines.append)
    assert any(line.startswith("step 2: sparsity") for line in lines)
    from edgeseg.models import load_model_dir

    model = load_model_dir(result.run_dir / "best").model
    per_layer, _ = zero_fractions(conv_layers(model))
    eligible = [name for name, conv in conv_layers(model).items() if conv.in_channels >= 32 or conv.out_channels >= 32]
    assert eligible and all(per_layer[name] >= 0.59 for name in eligible)
