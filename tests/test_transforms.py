"""Joint transforms keep image and label aligned; labels only ever take existing values."""

import numpy as np
import pytest
import torch

from edgeseg.data.transforms import (AugmentConfig, BlurConfig, EvalTransform, JitterConfig, NoiseConfig,
                                     ScaleConfig, TrainTransform, gaussian_blur)
from edgeseg.errors import ConfigError
from edgeseg.schema import validate


def coded_pair(h=24, w=32, classes=5):
    """An image whose red channel encodes the label (red = 40 * class), so alignment is checkable."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, classes, (h // 4, w // 4))
    label = np.kron(blocks, np.ones((4, 4), int)).astype(np.uint8)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = label * 40
    image[..., 1] = np.arange(w)[None, :] * 4
    return image, label


def test_flip_and_crop_keep_image_and_label_aligned():
    image, label = coded_pair()
    cfg = AugmentConfig(crop=(16, 16), hflip=1.0)
    out_image, out_label = TrainTransform(cfg, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))(image, label)
    assert out_image.shape == (3, 16, 16) and out_label.shape == (16, 16)
    assert torch.equal(out_image[0].round().long(), out_label * 40)
    green = out_image[1]
    assert (green[:, :-1] > green[:, 1:]).all()  # flipped: x decreases left to right


def test_crop_larger_than_image_pads_label_with_ignore():
    image, label = coded_pair(8, 8)
    torch.manual_seed(0)
    _, out_label = TrainTransform(AugmentConfig(crop=(12, 20), hflip=0.0))(image, label)
    assert out_label.shape == (12, 20)
    assert (out_label[8:, :] == 255).all() and (out_label[:, 8:] == 255).all()
    assert torch.equal(out_label[:8, :8], torch.from_numpy(label).long())


def test_random_scale_resizes_labels_with_nearest_neighbour():
    image, label = coded_pair()
    cfg = AugmentConfig(scale=ScaleConfig(prob=1.0, min=1.7, max=1.7), hflip=0.0)
    out_image, out_label = TrainTransform(cfg)(image, label)
    assert out_label.shape == (41, 54)
    assert set(out_label.unique().tolist()) <= set(np.unique(label).tolist())
    ref = torch.from_numpy(label)[None, None].float()
    nearest = torch.nn.functional.interpolate(ref, size=(41, 54), mode="nearest-exact")[0, 0].long()
    assert torch.equal(out_label, nearest)


def test_colour_jitter_changes_image_not_label():
    image, label = coded_pair()
    torch.manual_seed(3)
    cfg = AugmentConfig(hflip=0.0, color_jitter=JitterConfig(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1))
    jittered, out_label = TrainTransform(cfg)(image, label)
    plain, _ = EvalTransform()(image, label)
    assert not torch.allclose(jittered, plain)
    assert torch.equal(out_label, torch.from_numpy(label).long())


@pytest.mark.parametrize("sigma", [0.4, 1.3])
def test_gaussian_blur_matches_torchvision(sigma):
    from torchvision.transforms.v2.functional import gaussian_blur as reference

    image = torch.rand(3, 17, 23) * 255
    radius = max(1, int(np.ceil(3 * sigma)))
    expected = reference(image, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    torch.testing.assert_close(gaussian_blur(image, sigma), expected, atol=1e-3, rtol=1e-5)


def test_blur_and_noise_change_the_image_not_the_label():
    image, label = coded_pair()
    plain, _ = EvalTransform(mean=(0, 0, 0), std=(1, 1, 1))(image, label)
    torch.manual_seed(0)
    blurred, blurred_label = TrainTransform(AugmentConfig(hflip=0.0, blur=BlurConfig(prob=1.0, sigma=(1.0, 1.0))),
                                            mean=(0, 0, 0), std=(1, 1, 1))(image, label)
    expected = gaussian_blur(torch.from_numpy(image).permute(2, 0, 1).float(), 1.0) / 255
    torch.testing.assert_close(blurred, expected)
    grey = np.full((64, 64, 3), 128, np.uint8)
    noisy, noisy_label = TrainTransform(AugmentConfig(hflip=0.0, noise=NoiseConfig(prob=1.0, std=20.0)),
                                        mean=(0, 0, 0), std=(1, 1, 1))(grey, np.zeros((64, 64), np.uint8))
    spread = (noisy * 255 - 128).std().item()
    assert 0 < spread <= 20 * 1.1 and abs((noisy * 255).mean().item() - 128) < 2
    assert torch.equal(blurred_label, torch.from_numpy(label).long()) and (noisy_label == 0).all()
    assert not torch.allclose(blurred, plain)


def test_eval_transform_normalises_with_mean_and_std():
    image = np.full((2, 2, 3), 255, np.uint8)
    out, _ = EvalTransform(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(image, np.zeros((2, 2), np.uint8))
    assert out[:, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_augment_config_rejects_unknown_keys_and_bad_ranges():
    with pytest.raises(ConfigError, match=r"unknown key 'hflp' \(did you mean 'hflip'\?\)"):
        validate(AugmentConfig, {"hflp": 0.5}, "train.augment")
    with pytest.raises(ConfigError, match=r"unknown key 'scale.mn' \(did you mean 'min'\?\)"):
        validate(AugmentConfig, {"scale": {"mn": 0.5}}, "train.augment")
    with pytest.raises(ConfigError, match="scale min 2.0 exceeds max 1.0"):
        validate(AugmentConfig, {"scale": {"min": 2.0, "max": 1.0}}, "train.augment")
    with pytest.raises(ConfigError, match="blur sigma needs 0 < min <= max"):
        validate(AugmentConfig, {"blur": {"sigma": [2.0, 1.0]}}, "train.augment")


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_photometric_ops_match_torchvision(name):
    import torchvision.transforms.v2.functional as TF

    from edgeseg.data.transforms import adjust

    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    for factor in (0.6, 1.4):
        reference = getattr(TF, f"adjust_{name}")(image, factor).float()
        assert (adjust(image.float(), name, factor) - reference).abs().max() <= 1.5  # torchvision rounds to uint8


def test_phases_set_scale_and_crop_by_epoch_then_hand_over():
    from edgeseg.data.transforms import PhaseConfig

    image, label = coded_pair(h=32, w=48)
    half = ScaleConfig(min=0.5, max=0.5)
    cfg = AugmentConfig(crop=(16, 24), hflip=0.0, phases=[
        PhaseConfig(epochs=2, scale=half, crop=(8, 12)), PhaseConfig(epochs=1, crop=(4, 4))])
    transform = TrainTransform(cfg, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
    halved = torch.nn.functional.interpolate(torch.from_numpy(label)[None, None].float(), size=(16, 24),
                                             mode="nearest-exact")[0, 0].long()
    windows = {tuple(halved[t:t + 8, l:l + 12].flatten().tolist()) for t in range(9) for l in range(13)}
    for epoch, crop in [(0, (8, 12)), (1, (8, 12)), (2, (4, 4)), (3, (16, 24)), (50, (16, 24))]:
        transform.set_epoch(epoch)
        out_image, out_label = transform(image, label)
        assert out_label.shape == crop and out_image.shape[1:] == crop
        if epoch < 2:  # a window of the half-scale label (the image is blurred by the resize)
            assert tuple(out_label.flatten().tolist()) in windows
        else:
            assert torch.equal(out_image[0].round().long(), out_label * 40)
    assert cfg.geometry(2) == (None, (4, 4)) and cfg.geometry(3) == (cfg.scale, (16, 24))


def test_scale_and_pad_compute_what_torchvision_computes():
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    from edgeseg.data.transforms import pad_to, random_scale, to_tensors

    rng = np.random.default_rng(4)
    image, label = to_tensors(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
                              rng.integers(0, 12, (37, 53), dtype=np.uint8))
    for factor in (0.4, 0.77, 1.0, 1.5):
        scaled, scaled_label = random_scale(image, label, factor)
        size = [max(1, round(37 * factor)), max(1, round(53 * factor))]
        assert torch.equal(scaled, TF.resize(image, size, InterpolationMode.BILINEAR, antialias=True))
        assert torch.equal(scaled_label, TF.resize(label[None], size, InterpolationMode.NEAREST_EXACT)[0])
    padded, padded_label = pad_to(image, label, 40, 60, fill=7)
    assert torch.equal(padded, TF.pad(image, [0, 0, 7, 3], fill=7))
    assert torch.equal(padded_label, TF.pad(label[None], [0, 0, 7, 3], fill=255)[0])
