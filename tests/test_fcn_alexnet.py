"""FCN-AlexNet (issue 21): the crop offset derived from the layer stack against brute-force
alignment, the bilinear initialiser against a hand-written interpolation, net surgery against
torchvision's AlexNet classifier, and VOC preparation feeding a short training run."""

import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from conftest import error_line, run_cli_here as run_cli
from edgeseg.data.classes import VOC, bit_palette
from edgeseg.errors import ModelError
from edgeseg.models import create_model, load_model_dir
from edgeseg.models.alignment import coordinate_map, crop_offset
from edgeseg.models.blocks import FixedBilinearDeconv, init_bilinear_
from edgeseg.models.surgery import convolutionalize
from edgeseg.predict.predictors import TorchPredictor

torchvision = pytest.importorskip("torchvision")
TINY = {"width": 1 / 16}


def test_fcn_alexnet_crop_offset_is_derived_as_18():
    model = create_model("fcn_alexnet", 21, **TINY)
    assert crop_offset(model.layer_stack()) == (18, 18) == model.crop.offset
    for h, w in [(1, 1), (28, 45), (97, 64), (500, 375)]:
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 3, h, w)).shape == (1, 21, h, w)


def random_stack(rng: random.Random) -> list[nn.Module]:
    """Averaging convs and pools (rectangular paddings), then bilinear transposed convs that
    bring the scale back to 1, in float64."""
    layers, scale = [], 1
    for _ in range(rng.randint(1, 4)):
        k, s, d = rng.choice([1, 2, 3, 5]), rng.choice([1, 1, 2]), rng.choice([1, 1, 2])
        pad = (rng.randint(0, k), rng.randint(0, k))
        if rng.random() < 0.3:
            layers.append(nn.AvgPool2d(k, s, padding=(min(pad[0], k // 2), min(pad[1], k // 2))))
        else:
            conv = nn.Conv2d(1, 1, k, s, padding=pad, dilation=d, bias=False).double()
            nn.init.constant_(conv.weight, 1 / k ** 2)
            layers.append(conv)
        scale *= s
    while scale > 1:
        s = 2 if scale % 2 == 0 else scale
        k = rng.choice([2 * s, 2 * s - 1])
        deconv = nn.ConvTranspose2d(1, 1, k, s, padding=(rng.randint(0, s), rng.randint(0, s)), bias=False).double()
        layers.append(init_bilinear_(deconv))
        scale //= s
    return layers


def brute_force_offsets(layers, size: int = 160, margin: int = 40) -> list[int | None]:
    """Per axis: the offset c whose crop puts the input's coordinate i on output pixel i, found
    by feeding a ramp (value = coordinate) and trying every c (None: no whole c fits)."""
    found = []
    for axis in (2, 3):
        ramp = torch.arange(size, dtype=torch.float64)
        x = (ramp.view(1, 1, size, 1) if axis == 2 else ramp.view(1, 1, 1, size)).expand(1, 1, size, size)
        with torch.no_grad():
            y = nn.Sequential(*layers)(x.contiguous())
        line = y[0, 0, :, y.shape[3] // 2] if axis == 2 else y[0, 0, y.shape[2] // 2, :]
        fits = [c for c in range(-size, size)
                if all(0 <= i + c < line.numel() and abs(float(line[i + c]) - i) < 1e-9
                       for i in range(margin, size - margin))]
        found.append(fits[0] if len(fits) == 1 else None)
    return found


def test_crop_offset_matches_brute_force_alignment_on_random_stacks():
    rng = random.Random(0)
    whole = fractional = 0
    for _ in range(40):
        layers = random_stack(rng)
        expected = brute_force_offsets(layers)
        maps = coordinate_map(layers)
        assert all(scale == 1 for scale, _ in maps)
        if None in expected or min(expected) < 0:  # a fraction of a pixel, or cropping would need padding
            fractional += 1
            with pytest.raises(ModelError, match="shifted by"):
                crop_offset(layers)
        else:
            whole += 1
            assert crop_offset(layers) == tuple(expected)
        # the coordinate map itself: output pixel z holds input coordinate z + shift
        for axis, (_, shift) in zip((2, 3), maps):
            size = 160
            ramp = torch.arange(size, dtype=torch.float64)
            x = (ramp.view(1, 1, size, 1) if axis == 2 else ramp.view(1, 1, 1, size)).expand(1, 1, size, size)
            with torch.no_grad():
                y = nn.Sequential(*layers)(x.contiguous())
            line = y[0, 0, :, y.shape[3] // 2] if axis == 2 else y[0, 0, y.shape[2] // 2, :]
            z = size // 2
            assert float(line[z]) == pytest.approx(z + float(shift), abs=1e-9)
    assert whole >= 5 and fractional >= 5  # both kinds were exercised


def test_crop_offset_refuses_a_stack_off_the_input_grid():
    with pytest.raises(ModelError, match="not on the input's grid"):
        crop_offset([nn.Conv2d(1, 1, 3, stride=2)])
    with pytest.raises(ModelError, match="cannot place"):
        crop_offset([nn.Upsample(scale_factor=2)])


def reference_upsample(x: np.ndarray, kernel: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along the last axis at source position (z - (k - 1) / 2 + p) / s,
    written out pixel by pixel; with a mask of the interior (both neighbours inside)."""
    n = x.shape[-1]
    out_n = (n - 1) * stride - 2 * padding + kernel
    out, inside = np.zeros((*x.shape[:-1], out_n)), np.zeros(out_n, bool)
    for z in range(out_n):
        src = (z - (kernel - 1) / 2 + padding) / stride
        lo = int(np.floor(src))
        t = src - lo
        if 0 <= lo and lo + 1 <= n - 1:
            out[..., z] = (1 - t) * x[..., lo] + t * x[..., lo + 1]
            inside[z] = True
    return out, inside


@pytest.mark.parametrize("kernel,stride,padding,groups", [(4, 2, 1, 3), (63, 32, 0, 3), (64, 32, 16, 1),
                                                          (6, 3, 1, 3), (5, 3, 0, 1), (8, 4, 2, 1)])
def test_bilinear_initialiser_is_bilinear_interpolation_in_the_interior(kernel, stride, padding, groups):
    deconv = init_bilinear_(nn.ConvTranspose2d(3, 3, kernel, stride, padding, groups=groups).double())
    x = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        y = deconv(x).numpy()[0]
    rows, row_in = reference_upsample(np.swapaxes(x.numpy()[0], 1, 2), kernel, stride, padding)
    expected, col_in = reference_upsample(np.swapaxes(rows, 1, 2), kernel, stride, padding)
    interior = np.ix_(range(3), np.flatnonzero(row_in), np.flatnonzero(col_in))
    assert row_in.sum() > stride and col_in.sum() > stride
    np.testing.assert_allclose(y[interior], expected[interior], rtol=0, atol=1e-12)
    if kernel == 2 * stride and padding == stride // 2 and stride % 2 == 0:  # also torch's bilinear resize
        resized = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False).numpy()[0]
        np.testing.assert_allclose(y[interior], resized[interior], rtol=0, atol=1e-12)


def test_fixed_upscore_is_the_bilinear_initialised_transposed_conv():
    fixed = FixedBilinearDeconv(4, 63, 32, 0)
    reference = init_bilinear_(nn.ConvTranspose2d(4, 4, 63, 32, groups=4, bias=False))
    x = torch.randn(1, 4, 3, 2)
    with torch.no_grad():
        assert torch.equal(fixed(x), reference(x))
    assert not list(fixed.parameters())


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).eval()


def classifier_fc7(alexnet, pool5_window: torch.Tensor) -> torch.Tensor:
    """AlexNet's classifier up to fc7's ReLU (dropout is identity in eval mode)."""
    return alexnet.classifier[:6](torch.flatten(pool5_window, 1))


def test_convolutionalized_fc7_equals_the_classifier_on_one_window_and_on_every_window(alexnet):
    model = convolutionalize(alexnet.state_dict(), VOC)
    # conv1's padding is 100 against torchvision's 2: our input padded by 98 is torchvision's input.
    # 28 + 196 = 224 gives one 6x6 pool5 window; 28 + 32 k gives 6 + k windows per side.
    torch.manual_seed(1)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        pool5 = alexnet.features(F.pad(x, (98,) * 4))
        assert pool5.shape[-2:] == (6, 6)
        ours = model.fc7_features(x)
        assert ours.shape == (1, 4096, 1, 1)
        torch.testing.assert_close(ours[:, :, 0, 0], classifier_fc7(alexnet, pool5), rtol=0, atol=1e-5)

        x = torch.randn(1, 3, 28 + 32, 28 + 64)
        pool5 = alexnet.features(F.pad(x, (98,) * 4))
        ours = model.fc7_features(x)
        assert ours.shape[-2:] == (2, 3) and pool5.shape[-2:] == (7, 8)
        for i in range(2):
            for j in range(3):
                window = pool5[:, :, i:i + 6, j:j + 6]
                torch.testing.assert_close(ours[:, :, i, j], classifier_fc7(alexnet, window), rtol=0, atol=1e-5)
    assert torch.equal(model.score_fr.conv.weight, torch.zeros_like(model.score_fr.conv.weight))


def narrow_alexnet_state(width_divisor: int = 16) -> dict[str, torch.Tensor]:
    """Random tensors in torchvision AlexNet's names and layout, every width divided."""
    c1, c2, c3, c4, c5, fc = (n // width_divisor for n in (64, 192, 384, 256, 256, 4096))
    shapes = {"features.0": (c1, 3, 11, 11), "features.3": (c2, c1, 5, 5), "features.6": (c3, c2, 3, 3),
              "features.8": (c4, c3, 3, 3), "features.10": (c5, c4, 3, 3), "classifier.1": (fc, c5 * 36),
              "classifier.4": (fc, fc), "classifier.6": (1000, fc)}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=generator)
        state[f"{name}.bias"] = torch.randn(shape[0], generator=generator)
    return state


def test_surgery_command_writes_a_model_dir_from_safetensors_and_pth(tmp_path):
    state = narrow_alexnet_state()
    save_file(state, str(tmp_path / "alexnet.safetensors"))
    torch.save(state, tmp_path / "alexnet.pth")
    outputs = {}
    for name in ("alexnet.safetensors", "alexnet.pth"):
        out = tmp_path / f"fcn-{name.split('.')[1]}"
        proc = run_cli("surgery", "convolutionalize", str(tmp_path / name), "--out", str(out), "--classes", "voc",
                       check=True)
        assert "dropped classifier.6" in proc.stdout
        outputs[name] = load_model_dir(out)
    loaded = outputs["alexnet.pth"]
    config = json.loads((tmp_path / "fcn-pth" / "config.json").read_text())
    assert config["architecture"] == "fcn_alexnet" and config["num_classes"] == 21
    assert np.allclose(np.array(config["mean"]) * 255, 116) and np.allclose(np.array(config["std"]) * 255, 1)
    predictor = TorchPredictor.from_dir(tmp_path / "fcn-pth", torch.device("cpu"))
    pixels = torch.tensor([0, 116, 255], dtype=torch.uint8).view(1, 1, 3).expand(3, 1, 3)
    torch.testing.assert_close(predictor.normalize.image(pixels)[0, 0], torch.tensor([-116.0, 0.0, 139.0]),
                               rtol=0, atol=1e-4)  # what predict and export feed the model: pixel - 116
    assert config["arguments"] == {"width": 0.0625}
    assert torch.equal(loaded.model.fc6.conv.weight, state["classifier.1.weight"].view(256, 16, 6, 6))
    assert torch.equal(loaded.model.conv2.conv.bias, state["features.3.bias"])
    assert torch.equal(outputs["alexnet.safetensors"].model.fc7.conv.weight, loaded.model.fc7.conv.weight)

    again = run_cli("surgery", "convolutionalize", str(tmp_path / "alexnet.pth"), "--out", str(tmp_path / "x"),
                    "--classes", "nope")
    assert "classes: 'nope' is neither voc, camvid, cityscapes" in error_line(again)
    save_file({"features.0.weight": state["features.0.weight"]}, str(tmp_path / "partial.safetensors"))
    bad = run_cli("surgery", "convolutionalize", str(tmp_path / "partial.safetensors"), "--out",
                  str(tmp_path / "y"), "--classes", "voc")
    assert "not a torchvision AlexNet state dict" in error_line(bad) and not (tmp_path / "y").exists()


def voc_tar(path, ids_by_split, extra_members=()):
    """A tiny VOCdevkit tar: JPEGs, paletted labels (classes 0..20, a 255 border)."""
    rng = np.random.default_rng(0)
    palette = [v for colour in bit_palette(256) for v in colour]
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        root = "VOCdevkit/VOC2012/"
        for split, ids in ids_by_split.items():
            add(f"{root}ImageSets/Segmentation/{split}.txt", "".join(f"{i}\n" for i in ids).encode())
            for i in ids:
                h, w = rng.integers(30, 48), rng.integers(30, 48)
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG")
                add(f"{root}JPEGImages/{i}.jpg", buffer.getvalue())
                label = np.zeros((h, w), np.uint8)
                label[h // 3:, : w // 2] = rng.integers(1, 21)
                label[0, :] = 255
                image = Image.fromarray(label, mode="P")
                image.putpalette(palette)
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                add(f"{root}SegmentationClass/{i}.png", buffer.getvalue())
        for name, data in extra_members:
            add(name, data)
    return path


def test_voc_archive_prepares_and_fcn_alexnet_trains_on_it(tmp_path):
    archive = voc_tar(tmp_path / "voc.tar", {"train": ["2007_000032", "2007_000039"], "val": ["2007_000063"]},
                      extra_members=[("../../escape.txt", b"x")])
    out = tmp_path / "voc"
    proc = run_cli("data", "prepare", "voc", str(archive), str(out), check=True)
    assert "checksum: no known hash" in proc.stdout and "train 2 images, val 1 images" in proc.stdout
    assert sorted(p.name for p in (out / "train" / "labels").iterdir()) == ["2007_000032.png", "2007_000039.png"]
    label = Image.open(out / "val" / "labels" / "2007_000063.png")
    assert label.mode == "P" and label.getpalette()[3:6] == [128, 0, 0]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()

    proc = run_cli("train", f"data.spec=folder:{out}", "model.name=fcn_alexnet", "model.args.width=0.0625",
                   "augment.crop=null", "batch_size=1", "epochs=2", "data.num_workers=0", "tensorboard=false",
                   f"runs_dir={tmp_path / 'runs'}", "name=fcn", check=True)
    run_dir = tmp_path / "runs" / "fcn"
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert config["architecture"] == "fcn_alexnet" and config["num_classes"] == 21
    assert np.allclose(np.array(config["mean"]) * 255, 116)  # the architecture's own input shift
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "best val mIoU" in proc.stdout

    # DIGITS' workflow: convolutionalize an (here narrow, random) AlexNet, then train from it
    save_file(narrow_alexnet_state(), str(tmp_path / "alexnet.safetensors"))
    run_cli("surgery", "convolutionalize", str(tmp_path / "alexnet.safetensors"), "--out", str(tmp_path / "fcn"),
            "--classes", "voc", check=True)
    run_cli("train", f"data.spec=folder:{out}", f"model.init_from={tmp_path / 'fcn'}", "augment.crop=null",
            "batch_size=1", "epochs=1", "data.num_workers=0", "tensorboard=false", f"runs_dir={tmp_path / 'runs'}",
            "name=from-surgery", check=True)
    config = json.loads((tmp_path / "runs" / "from-surgery" / "best" / "config.json").read_text())
    assert [entry["stage"] for entry in config["history"]] == ["convolutionalize", "train"]
    assert np.allclose(np.array(config["mean"]) * 255, 116)  # the starting model directory's


def test_voc_preparation_refuses_bad_archives(tmp_path):
    evil = voc_tar(tmp_path / "evil.tar", {"train": ["a"], "val": ["b"]})
    with tarfile.open(evil, "a") as tar:  # a second train.txt naming a path, read last
        data = b"../../../etc/passwd\n"
        info = tarfile.TarInfo("VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    proc = run_cli("data", "prepare", "voc", str(evil), str(tmp_path / "out"))
    assert "is not a plain image name" in error_line(proc) and not (tmp_path / "out").exists()

    named = voc_tar(tmp_path / "VOCtrainval_11-May-2012.tar", {"train": ["a"], "val": ["b"]})
    proc = run_cli("data", "prepare", "voc", str(named), str(tmp_path / "out"))
    assert "is not the published 6cd6e144f989b92b3379bac3b3de84fd" in error_line(proc)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("mine")
    proc = run_cli("data", "prepare", "voc", str(evil), str(tmp_path / "keep"))
    assert "keep" in error_line(proc) and (tmp_path / "keep" / "mine.txt").read_text() == "mine"


def test_a_recipe_convolutionalizes_trains_and_exports_fcn_alexnet(tmp_path):
    import yaml

    archive = voc_tar(tmp_path / "voc.tar", {"train": ["a1", "a2"], "val": ["b1"]})
    run_cli("data", "prepare", "voc", str(archive), str(tmp_path / "voc"), check=True)
    save_file(narrow_alexnet_state(), str(tmp_path / "alexnet.safetensors"))
    recipe = {
        "name": "digits", "out_dir": str(tmp_path / "pipeline"), "report": {"latency_runs": 1},
        "train": {"data": {"spec": f"folder:{tmp_path / 'voc'}", "num_workers": 0}, "augment": {"crop": None},
                  "batch_size": 1, "epochs": 1, "tensorboard": False},
        "stages": {"surgery": {"stage": "convolutionalize", "weights": str(tmp_path / "alexnet.safetensors")},
                   "train": {}, "export": {"check_images": 1}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_cli("run", str(tmp_path / "recipe.yaml"), check=True)
    report = json.loads((tmp_path / "pipeline" / "report.json").read_text())
    assert [row["kind"] for row in report["stages"]] == ["convolutionalize", "train", "export"]
    trained = load_model_dir(tmp_path / "pipeline" / "stages" / "02-train" / "model")
    assert trained.config.architecture == "fcn_alexnet" and trained.config.classes == list(VOC.names)
    assert [entry.stage for entry in trained.config.history] == ["convolutionalize", "train"]
