"""Thresholding: the seed tool's buckets, grid search and caps, per layer and per channel."""

import math

import pytest
import torch

from conftest import run_cli_here as run_cli
from edgeseg.compress.threshold import ThresholdConfig, bucket_of, grid_threshold, threshold_model
from edgeseg.data.classes import CAMVID
from edgeseg.models import create_model, load_model_dir, model_config_for, save_model_dir


def stepping_search(weights: torch.Tensor, target: float, config: ThresholdConfig) -> float:
    """The seed's search, literally: walk t up the grid while the zero fraction stays within
    the target and t stays under the cap."""
    magnitudes = weights.abs().flatten().double()
    step = float(magnitudes.max()) * config.step_factor
    cap = min(config.value_max, config.value_maxratio * float(magnitudes.max()))
    t = 0.0
    while True:
        candidate = t + step
        if candidate > cap + 1e-15 or float((magnitudes <= candidate).double().mean()) > target + 1e-12:
            return t
        t = candidate


@pytest.mark.parametrize("ni,no,bucket", [(3, 16, None), (16, 31, None), (16, 32, "low"), (32, 16, "low"),
                                          (32, 32, "mid"), (256, 256, "mid"), (255, 512, "mid"), (256, 512, "high")])
def test_buckets_follow_the_channel_counts(ni, no, bucket):
    assert bucket_of(ni, no) == bucket


@pytest.mark.parametrize("seed,target,maxratio", [(0, 0.8, 0.9), (1, 0.4, 0.9), (2, 0.8, 0.1), (3, 0.95, 1.0)])
def test_grid_threshold_equals_the_stepping_search(seed, target, maxratio):
    torch.manual_seed(seed)
    weights = torch.randn(64, 8, 3, 3) * 0.05
    config = ThresholdConfig(step_factor=1e-3, value_maxratio=maxratio, value_max=1.0)
    t, capped = grid_threshold(weights.abs(), target, config)
    assert math.isclose(t, stepping_search(weights, target, config), rel_tol=1e-9, abs_tol=1e-12)
    fraction = float((weights.abs() <= t).double().mean())
    assert fraction <= target
    assert capped == (maxratio == 0.1)
    if not capped:
        assert float((weights.abs() <= t + config.step_factor * float(weights.abs().max())).double().mean()) > target


def test_layers_reach_their_targets_unless_capped():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 32, 3), torch.nn.Conv2d(32, 64, 3),
                                torch.nn.Conv2d(64, 64, 1))
    with torch.no_grad():
        model[3].weight.mul_(0.01)
    rows = threshold_model(model, ThresholdConfig(value_max=0.005, value_maxratio=1.0))
    by_name = {row.name: row for row in rows}
    assert set(by_name) == {"1", "2", "3"}  # 3->16 is skipped
    assert [by_name[n].bucket for n in "123"] == ["low", "mid", "mid"]
    assert (model[0].weight != 0).all()
    assert by_name["1"].capped_units == 1 and by_name["1"].achieved < 0.4 and by_name["1"].threshold <= 0.005
    assert by_name["2"].capped_units == 1 and by_name["2"].achieved < 0.8
    assert by_name["3"].capped_units == 0 and by_name["3"].achieved == pytest.approx(0.8, abs=1 / 4096)
    assert by_name["3"].achieved == pytest.approx(float((model[3].weight == 0).double().mean()))


def test_per_channel_mode_gives_every_output_channel_its_target():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 48, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.1, 3, 48).view(-1, 1, 1, 1))  # channels of very different scale
    per_layer = torch.nn.Sequential(conv)
    per_channel = torch.nn.Sequential(torch.nn.Conv2d(32, 48, 3))
    per_channel.load_state_dict(per_layer.state_dict())
    config = ThresholdConfig(value_max=10, value_maxratio=1.0)
    threshold_model(per_layer, config)
    threshold_model(per_channel, config.model_copy(update={"per_channel": True}))
    channel_zeros = (per_channel[0].weight == 0).flatten(1).double().mean(1)
    assert torch.allclose(channel_zeros, torch.full((48,), math.floor(0.8 * 288) / 288, dtype=torch.float64))
    layer_zeros = (per_layer[0].weight == 0).flatten(1).double().mean(1)
    assert layer_zeros[0] > 0.95 and layer_zeros[-1] < 0.7  # one threshold starves small-scale channels
    assert float(layer_zeros.mean()) == pytest.approx(float(channel_zeros.mean()), abs=0.01)


def test_threshold_command_prints_the_table_and_records_history(tmp_path):
    torch.manual_seed(0)
    model = create_model("swiftnet", CAMVID.num_classes, width=0.25, decoder=32)
    save_model_dir(model, model_config_for(model, CAMVID, (64, 64)), tmp_path / "dense")
    result = run_cli("threshold", str(tmp_path / "dense"), "--out", str(tmp_path / "sparse"), "--per-channel",
                     "--fraction-mid", "0.7", "--value-maxratio", "1", "--value-max", "10", check=True)
    assert "stage4.1.conv2.conv" in result.stdout and "mid" in result.stdout
    loaded = load_model_dir(tmp_path / "sparse")
    assert loaded.config.history[-1].stage == "threshold"
    assert loaded.config.history[-1].per_channel is True
    assert 0.5 < loaded.config.history[-1].sparsity_after < 0.7
    bad = run_cli("threshold", str(tmp_path / "dense"), "--out", str(tmp_path / "x"), "--fraction-mid", "1.5")
    assert bad.returncode == 2 and "fraction_mid" in bad.stderr
