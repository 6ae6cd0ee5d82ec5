"""ConfusionMatrix against independent computations: a per-pixel Python loop and hand cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.metrics import ConfusionMatrix

IGNORE = 255


def reference_metrics(preds, targets, num_classes):
    """Straightforward per-pixel loop, written independently of the implementation."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    correct = total = 0
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
            if t == IGNORE:
                continue
            total += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fp[p] += 1
                fn[t] += 1
    ious = []
    for c in range(num_classes):
        union = tp[c] + fp[c] + fn[c]
        ious.append(tp[c] / union if union else None)
    defined = [v for v in ious if v is not None]
    accs = [tp[c] / (tp[c] + fn[c]) for c in range(num_classes) if tp[c] + fn[c]]
    return {
        "miou": sum(defined) / len(defined),
        "pixel_acc": correct / total,
        "mean_acc": sum(accs) / len(accs),
        "ious": ious,
    }


def test_random_maps_match_pixel_loop():
    rng = np.random.default_rng(0)
    num_classes = 6
    preds, targets = [], []
    cm = ConfusionMatrix(num_classes)
    for _ in range(4):
        target = rng.integers(0, num_classes, (13, 17))
        target[rng.random((13, 17)) < 0.2] = IGNORE
        target[target == 4] = 3  # class 4 absent from ground truth...
        pred = rng.integers(0, num_classes, (13, 17))
        pred[pred == 5] = 0  # ...and class 5 absent from predictions only
        preds.append(pred)
        targets.append(target)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    ref = reference_metrics(preds, targets, num_classes)
    got = cm.summary()
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert got["pixel_acc"] == pytest.approx(ref["pixel_acc"], abs=1e-12)
    assert got["mean_acc"] == pytest.approx(ref["mean_acc"], abs=1e-12)
    for c, value in enumerate(ref["ious"]):
        assert got["per_class_iou"][str(c)] == (pytest.approx(value, abs=1e-12) if value is not None else None)
    assert got["per_class_iou"]["4"] == 0.0  # predicted but never in ground truth: IoU 0, counted


def test_hand_made_case_with_known_ious():
    # ground truth  prediction
    # 0 0 1 1       0 1 1 1
    # 0 0 1 255     0 0 1 0      (the 255 pixel is ignored whatever is predicted)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[3, 1, 0], [0, 3, 0], [0, 0, 0]]
    s = cm.summary(["a", "b", "c"])
    assert s["per_class_iou"] == {"a": 3 / 4, "b": 3 / 4, "c": None}  # c absent from both: undefined
    assert s["miou"] == pytest.approx(0.75)  # c left out of the mean
    assert s["pixel_acc"] == pytest.approx(6 / 7)
    assert s["mean_acc"] == pytest.approx((3 / 4 + 1) / 2)
    assert s["valid_pixels"] == 7


def test_logits_are_argmaxed_and_batches_accumulate():
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 2] = 1.0  # predicts class 2 everywhere
    target = torch.full((2, 2, 2), 2)
    target[0, 0, 0] = 1
    cm = ConfusionMatrix(3)
    cm.update(logits, target)
    cm.update(logits, target)
    assert cm.matrix[2, 2] == 14 and cm.matrix[1, 2] == 2


def test_out_of_range_target_is_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def test_all_ignored_gives_nan_not_crash():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([IGNORE, IGNORE]))
    assert math.isnan(cm.summary()["miou"])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_property_matches_reference(num_classes, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, (5, 7))
    target[rng.random((5, 7)) < 0.3] = IGNORE
    target[0, 0] = 0
    pred = rng.integers(0, num_classes, (5, 7))
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    ref = reference_metrics([pred], [target], num_classes)
    got = cm.summary()
    assert got["miou"] == pytest.approx(ref["miou"])
    assert got["pixel_acc"] == pytest.approx(ref["pixel_acc"])


def test_class_ids_equal_argmax_including_ties():
    from edgeseg.metrics import class_ids

    torch.manual_seed(0)
    logits = torch.randn(2, 11, 30, 40)
    logits[0, 7] = logits[0, 2]  # every pixel of image 0 ties between classes 2 and 7 where they win
    logits[1, :, :5] = 0.0  # all classes tie: the first wins
    assert torch.equal(class_ids(logits), logits.argmax(dim=1))
    assert bool((class_ids(logits)[1, :5] == 0).all())
