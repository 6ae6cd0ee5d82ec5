"""Hard-pixel (OHEM) cross-entropy against a NumPy re-derivation of its definition."""

import numpy as np
import pytest
import torch

from edgeseg.training.losses import HardPixelCrossEntropy, pixel_loss

IGNORE = 255


def reference_ohem(logits, labels, weight, threshold, min_kept):
    """Softmax, true-class probabilities, selection and weighted mean, one pixel at a time."""
    x = logits.double().numpy()
    y = labels.numpy()
    w = np.ones(x.shape[1]) if weight is None else weight.double().numpy()
    pixels = []
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                if y[n, i, j] == IGNORE:
                    continue
                z = x[n, :, i, j]
                p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                pixels.append((-np.log(p[y[n, i, j]]), p[y[n, i, j]], w[y[n, i, j]]))
    hard = [px for px in pixels if px[1] < threshold]
    wanted = int(min_kept * len(pixels))
    if len(hard) < wanted:
        hard = sorted(pixels, key=lambda px: -px[0])[:wanted]
    return sum(loss * weight for loss, _, weight in hard) / sum(weight for _, _, weight in hard)


@pytest.mark.parametrize("threshold,min_kept", [(0.7, 0.05), (0.3, 0.5), (0.05, 0.25)])
@pytest.mark.parametrize("weighted", [False, True])
def test_hard_pixel_loss_matches_its_definition(threshold, min_kept, weighted):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 9, 7, generator=gen) * 3
    labels = torch.randint(0, 4, (2, 9, 7), generator=gen)
    labels[0, :2] = IGNORE
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0]) if weighted else None
    loss = HardPixelCrossEntropy(weight, IGNORE, threshold, min_kept)(logits, labels)
    assert loss.item() == pytest.approx(reference_ohem(logits, labels, weight, threshold, min_kept), rel=1e-5)


def test_min_kept_applies_when_few_pixels_are_hard():
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = 10.0  # every pixel predicts class 0 with p ~ 1
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1  # two wrong pixels, the only hard ones
    loss = HardPixelCrossEntropy(None, IGNORE, 0.7, 0.5)
    # half of the 16 labelled pixels are kept: the 2 wrong ones and 6 right ones
    expected = reference_ohem(logits, labels, None, 0.7, 0.5)
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((2 * 10.0 + 6 * np.log1p(np.exp(-10.0))) / 8, rel=1e-4)


def test_threshold_one_keeps_every_pixel_and_equals_weighted_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 6, generator=gen, requires_grad=True)
    labels = torch.randint(0, 5, (2, 6, 6), generator=gen)
    labels[1, 3:] = IGNORE
    weight = torch.rand(5, generator=gen) + 0.5
    ohem = pixel_loss(weight, IGNORE, 1.0, 0.01)(logits, labels)
    plain = pixel_loss(weight, IGNORE, None, 0.01)
    assert isinstance(plain, torch.nn.CrossEntropyLoss)
    reference = plain(logits, labels)
    assert ohem.item() == pytest.approx(reference.item(), rel=1e-6)
    ohem_grad, = torch.autograd.grad(ohem, logits)
    reference_grad, = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ohem_grad, reference_grad)


def test_hard_pixel_loss_on_an_all_ignored_batch_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), IGNORE)
    loss = HardPixelCrossEntropy(None, IGNORE, 0.7, 0.1)(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("ohem_threshold", [None, 1.0])
def test_label_smoothing_matches_its_definition(ohem_threshold):
    """(1 - e) x -log p(true) + e x mean over classes of -log p(c), averaged over labelled pixels."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 5, 3, generator=gen) * 2
    labels = torch.randint(0, 4, (2, 5, 3), generator=gen)
    labels[1, :2] = IGNORE
    smoothing = 0.2
    loss = pixel_loss(None, IGNORE, ohem_threshold, 0.01, smoothing)(logits, labels)
    log_p = torch.log_softmax(logits.double(), 1).permute(0, 2, 3, 1).numpy()
    y = labels.numpy()
    terms = [(1 - smoothing) * -log_p[n, i, j, y[n, i, j]] + smoothing * -log_p[n, i, j].mean()
             for n, i, j in np.ndindex(y.shape) if y[n, i, j] != IGNORE]
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_label_smoothing_keeps_ohem_hardness_on_the_true_class():
    """The same pixels are kept with and without smoothing: only their loss changes."""
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([8.0, 8.0, -8.0, 0.5])  # p(class 0): ~1, ~1, ~0, 0.62
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    plain = HardPixelCrossEntropy(None, IGNORE, 0.7, 0.01)(logits, labels)
    smoothed = HardPixelCrossEntropy(None, IGNORE, 0.7, 0.01, label_smoothing=0.1)(logits, labels)
    log_p = torch.log_softmax(logits[0, :, 0, 2:], 0)  # the two hard pixels
    assert plain.item() == pytest.approx(-log_p[0].mean().item(), rel=1e-6)
    assert smoothed.item() == pytest.approx((0.9 * -log_p[0] + 0.1 * -log_p.mean(0)).mean().item(), rel=1e-6)
