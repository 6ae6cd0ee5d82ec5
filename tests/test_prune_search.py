"""Accuracy-driven pruning (issue 23 item 5): the MACs estimate the search relies on equals what
hard pruning builds, the predicted loss reads the scan as documented, the greedy allocation
spares a sensitive layer group and meets its target, and `edgeseg prune --target-macs` writes,
reuses and reports its scan."""

import json
import random

import pytest
import torch

from conftest import error_line, randomize_batchnorm, run_cli_here as run_cli
from edgeseg.compress.prune import plan_pruning
from edgeseg.compress.prune_search import (MacsEstimate, Sensitivity, allocate_macs, greedy_path, grid,
                                           pruned_copy, scan_sensitivity, scope_sizes, subset_miou)
from edgeseg.compress.specs import PruneConfig
from edgeseg.data.classes import CAMVID
from edgeseg.errors import ConfigError
from edgeseg.models import create_model, list_models, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.profile import profile_model

from test_prune import SIZE, tiny_model


@pytest.mark.parametrize("name", list_models())
def test_macs_estimate_equals_the_hard_pruned_model(name):
    model = tiny_model(name)
    plan = plan_pruning(model, 1.0)
    estimate = MacsEstimate(plan, profile_model(model, SIZE))
    rng = random.Random(0)
    for _ in range(3):
        keeps = {key: rng.choice([0.25, 0.5, 0.75]) for key in scope_sizes(plan) if rng.random() < 0.7}
        exact = profile_model(pruned_copy(model, "l1", set(), keeps), SIZE).macs
        assert estimate.macs(keeps) == exact


def test_predicted_loss_interpolates_a_monotone_scan():
    scan = Sensitivity(base_miou=0.60, ratios=[0.75, 0.5, 0.25], images=4,
                       miou={"a": [0.58, 0.59, 0.50], "b": [0.61, 0.60, 0.55]})
    assert scan.loss("a", 1.0) == 0
    assert scan.loss("a", 0.75) == pytest.approx(0.02)
    assert scan.loss("a", 0.875) == pytest.approx(0.01)  # halfway between keep 1 (no loss) and 0.75
    assert scan.loss("a", 0.5) == pytest.approx(0.02)  # measured 0.01, never below the loss at 0.75
    assert scan.loss("a", 0.375) == pytest.approx(0.06)
    assert scan.loss("b", 0.75) == 0  # a gain is no negative loss
    assert scan.loss("b", 0.25) == pytest.approx(0.05)
    assert scan.loss("unscanned", 0.25) == 0
    assert grid([0.75, 0.5, 0.3]) == [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.3]


def test_allocation_meets_the_target_and_spares_the_sensitive_group():
    model = tiny_model("swiftnet")
    plan = plan_pruning(model, 1.0)
    sizes = scope_sizes(plan)
    estimate = MacsEstimate(plan, profile_model(model, SIZE))
    sensitive = max(sizes, key=lambda key: estimate.dense - estimate.macs({key: 0.5}))  # the most MACs to save
    scan = Sensitivity(0.5, [0.75, 0.5, 0.25], {key: [0.5 - (0.3 if key == sensitive else 0.001 * i)] * 3
                                                  for i, key in enumerate(sizes)}, 4)
    allocation = allocate_macs(estimate, scan, sizes, 0.6)
    assert allocation.macs <= 0.6 * estimate.dense
    assert sensitive not in allocation.keeps
    assert profile_model(pruned_copy(model, "l1", set(), allocation.keeps), SIZE).macs == allocation.macs
    path = greedy_path(estimate, scan, sizes)
    assert all(a.macs > b.macs and a.predicted_loss <= b.predicted_loss for a, b in zip(path, path[1:]))
    with pytest.raises(ConfigError, match="out of reach.*leaves 0.[0-9]+ of the MACs"):
        allocate_macs(estimate, scan, sizes, 0.01)


def test_scan_scores_each_group_cut_alone_and_leaves_the_model_whole():
    model = tiny_model("basic_encdec")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = model_config_for(model, CAMVID.__class__(("a", "b", "c"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)), 255), SIZE)
    generator = torch.Generator().manual_seed(0)
    images = [(torch.randn(3, *SIZE, generator=generator), torch.randint(0, 3, SIZE, generator=generator))
              for _ in range(3)]
    scan = scan_sensitivity(model, config, images, [0.5], "l1", set(), log=lambda line: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scan.base_miou == pytest.approx(subset_miou(model, config, images))
    key = next(iter(scan.miou))
    cut = pruned_copy(model, "l1", set(), {key: 0.5})
    assert scan.miou[key][0] == pytest.approx(subset_miou(cut, config, images), abs=1e-6)


def test_target_config_is_one_way_to_choose():
    with pytest.raises(ValueError, match="keep: give keep or a target"):
        PruneConfig(keep=0.5, target_macs=0.5)
    with pytest.raises(ValueError, match="not both"):
        PruneConfig(target_macs=0.5, target_latency_ms=3)
    with pytest.raises(ValueError, match="scan_ratios"):
        PruneConfig(target_macs=0.5, scan_ratios=[0.5, 1.0])
    assert PruneConfig(target_macs=0.5).targeted


def test_prune_command_with_a_macs_target_writes_and_reuses_its_scan(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("swiftnet", 11, width=0.125, decoder=16)).eval()
    source = save_model_dir(model, model_config_for(model, CAMVID, (64, 96),
                                                    history=[{"stage": "train", "data": "synthetic:4"}]), tmp_path / "m")
    out = tmp_path / "p"
    args = ("prune", str(source), "--out", str(out), "--scan-images", "2", "scan_ratios=[0.5]")
    first = run_cli(*args, "--target-macs", "0.7", "--plot", str(tmp_path / "cut.png"), check=True)
    assert "prune scan:" in first.stdout and "layer groups cut:" in first.stdout
    record = json.loads((out / "sensitivity.json").read_text())
    pruned = load_model_dir(out)
    history = pruned.config.history[-1]
    assert history.stage == "prune"
    assert profile_model(pruned.model, (64, 96)).macs <= 0.7 * profile_model(model, (64, 96)).macs
    assert (out / "sensitivity.png").read_bytes().startswith(b"\x89PNG")
    rows = (out / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "layer_group,channels,keep,loss_at_0.5" and len(rows) == 1 + len(record["scan"]["miou"])
    again = run_cli(*args, "--target-macs", "0.5", "--force", check=True)
    assert "reusing" in again.stdout and "prune scan: " not in again.stdout.replace("prune scan: reusing", "")
    assert json.loads((out / "sensitivity.json").read_text())["scan"] == record["scan"]
    assert profile_model(load_model_dir(out).model, (64, 96)).macs <= 0.5 * profile_model(model, (64, 96)).macs
    unreachable = run_cli(*args, "--target-macs", "0.001", "--force")
    assert unreachable.returncode == 2
    assert "target_macs: 0.001 is out of reach" in error_line(unreachable)
    both = run_cli(*args[:4], "--target-macs", "0.5", "--keep", "0.5")
    assert "give keep or a target" in error_line(both)


def test_channel_multiple_rounds_every_cut_layer_and_the_estimate_follows():
    model = create_model("swiftnet", 11, width=0.5, decoder=64).eval()
    plan = plan_pruning(model, 0.718, multiple=8)
    pruned = pruned_copy(model, "l1", set(), {key: 0.718 for key in scope_sizes(plan)}, multiple=8)
    before = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    after = {name: m.out_channels for name, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    cut = {name: (before[name], width) for name, width in after.items() if width != before[name]}
    assert cut and all(width % 8 == 0 for _, width in cut.values())
    assert all(width == max(8, round(int(n * 0.718) / 8) * 8) for n, width in cut.values())  # 64 -> 48, 128 -> 88
    estimate = MacsEstimate(plan_pruning(model, 1.0), profile_model(model, SIZE), multiple=8)
    keeps = {key: 0.718 for key in scope_sizes(plan)}
    assert estimate.macs(keeps) == profile_model(pruned, SIZE).macs
