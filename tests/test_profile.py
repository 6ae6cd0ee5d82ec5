"""The profiler's MACs and sparsity against hand computation; jacintonet11_seg anatomy."""

import torch
from torch import nn

from conftest import run_cli_here as run_cli
from edgeseg.data.classes import CAMVID
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.models.blocks import FixedBilinearDeconv, bilinear_kernel
from edgeseg.models.profile import profile_model


def test_macs_params_and_sparsity_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                          nn.Conv2d(8, 8, 3, padding=1, groups=4), FixedBilinearDeconv(8))
    with torch.no_grad():
        model[1].weight.view(-1)[:72] = 0  # half of the 144 weights
    profile = profile_model(model, (16, 16))
    first, second, deconv = profile.layers
    assert first.macs == 8 * 8 * 8 * 3 * 9 and first.output_size == (8, 8)
    assert second.macs == 8 * 8 * 8 * 2 * 9 and second.params == 144 + 8
    assert second.sparsity == 0.5 and second.effective_macs == second.macs // 2
    assert deconv.output_size == (16, 16) and deconv.macs == 8 * 8 * 8 * 1 * 16 and deconv.weights == 0
    assert profile.sparsity == 72 / (216 + 144)
    assert profile.params == 216 + 152


def test_bilinear_deconv_kernel_and_interpolation():
    assert torch.allclose(bilinear_kernel(4)[0] / bilinear_kernel(4)[0, 0], torch.tensor([1.0, 3.0, 3.0, 1.0]))
    ramp = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    up = FixedBilinearDeconv(1)(ramp)
    interior = up[0, 0, 2:-2, 2:-2]
    reference = torch.nn.functional.interpolate(ramp, scale_factor=2, mode="bilinear", align_corners=False)[0, 0, 2:-2, 2:-2]
    assert torch.allclose(interior, reference, atol=1e-6)
    assert not any(p.requires_grad for p in FixedBilinearDeconv(3).parameters())


def test_jacintonet_anatomy_and_width():
    model = create_model("jacintonet11_seg", num_classes=5, width=0.5)
    assert model.output_stride == 16
    assert model.conv1[0].conv.kernel_size == (5, 5) and model.conv1[0].conv.out_channels == 16
    assert model.conv1[1].conv.groups == 4 and model.res5a[1].conv.dilation == (2, 2)
    assert model.out5a.conv.dilation == (4, 4) and model.out5a.conv.groups == 2
    assert [m.conv.dilation[0] for m in model.ctx] == [1, 4, 4, 4]
    assert len(model.up8) == 3 and model(torch.zeros(1, 3, 32, 64)).shape == (1, 5, 32, 64)


def test_info_command_prints_layers_and_totals(tmp_path):
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8)
    with torch.no_grad():
        model.stem[0].conv.weight.zero_()
    path = save_model_dir(model, model_config_for(model, CAMVID, (64, 96)), tmp_path / "m")
    proc = run_cli("info", str(path), check=True)
    expected = profile_model(model, (64, 96))
    assert "stem.0.conv" in proc.stdout and "classifier.conv" in proc.stdout
    assert f"params {expected.params:,}" in proc.stdout
    assert f"GMACs {expected.macs / 1e9:.3f}" in proc.stdout and f"{100 * expected.sparsity:.1f} %" in proc.stdout
