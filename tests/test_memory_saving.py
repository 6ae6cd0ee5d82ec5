"""Gradient checkpointing: the same step as without it, less saved for backward."""

import copy

import pytest
import torch
import torch.nn.functional as F

from edgeseg.errors import ConfigError
from edgeseg.models import create_model
from edgeseg.training.losses import head_weights, multi_head_loss, pixel_loss
from edgeseg.training.memory_saving import (default_checkpoint_modules, disable_checkpointing, enable_checkpointing,
                                            resolve_checkpoint_modules)


def saved_bytes_and_step(model, images, labels, autocast=False):
    """One training forward/backward; the bytes autograd kept for backward."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    return total[0]


def twin_swiftnets():
    torch.manual_seed(0)
    plain = create_model("swiftnet", 4, width=0.25, decoder=16).train()
    checkpointed = copy.deepcopy(plain)
    enable_checkpointing(checkpointed, list(default_checkpoint_modules(checkpointed)))
    return plain, checkpointed


@pytest.mark.parametrize("autocast", [False, True])
def test_checkpointed_step_matches_the_plain_one(autocast):
    plain, checkpointed = twin_swiftnets()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    plain_bytes = saved_bytes_and_step(plain, images, labels, autocast)
    checkpointed_bytes = saved_bytes_and_step(checkpointed, images, labels, autocast)
    assert checkpointed_bytes < 0.6 * plain_bytes
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-6, msg=name)
    # the recomputation must not update BatchNorm statistics a second time
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert int(dict(checkpointed.named_buffers())["stage1.0.conv1.bn.num_batches_tracked"]) == 1


def test_checkpointing_leaves_evaluation_and_weights_alone():
    plain, checkpointed = twin_swiftnets()
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    average = copy.deepcopy(checkpointed)  # as the weight average copies a model
    assert average.stage1.forward.__self__ is average.stage1
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = plain.eval()(images)
        torch.testing.assert_close(checkpointed.eval()(images), expected, rtol=0, atol=0)
    disable_checkpointing(checkpointed)
    assert "forward" not in vars(checkpointed.stage1)


def test_module_names_are_checked():
    model = create_model("swiftnet", 4, width=0.25, decoder=16)
    assert resolve_checkpoint_modules(model, ["stage2", "up8"], "swiftnet") == ["stage2", "up8"]
    assert resolve_checkpoint_modules(model, False, "swiftnet") == []
    with pytest.raises(ConfigError, match="no module 'stage5'; did you mean stage4"):
        resolve_checkpoint_modules(model, ["stage5"], "swiftnet")
    bare = create_model("basic_encdec", 4)
    with pytest.raises(ConfigError, match="declares no modules to checkpoint; list some instead, e.g. memory_saving=\\[stem"):
        resolve_checkpoint_modules(bare, True, "basic_encdec")


def test_training_with_memory_saving_ends_with_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from edgeseg.training.config import load_train_config
    from edgeseg.training.loop import train

    tiny = ["data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.name=swiftnet",
            "model.args={width: 0.25, decoder: 16}", "data.num_workers=0", "seed=3", "deterministic=true",
            "tensorboard=false", "epochs=1", f"runs_dir={tmp_path}"]
    lines = []
    saving = train(load_train_config(None, tiny + ["memory_saving=true", "name=saving"]), log=lines.append)
    plain = train(load_train_config(None, tiny + ["name=plain"]), log=lambda _: None)
    assert ("memory_saving: checkpointing stem, stage1, stage2, stage3, stage4, context, up16, up8, up4 and the "
            "loss's upsampled logits") in lines
    a, b = (load_file(str(run.run_dir / "last" / "model.safetensors")) for run in (saving, plain))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("ohem, autocast", [(None, False), (0.05, False), (None, True)])
def test_lean_loss_matches_the_plain_one_and_keeps_no_full_resolution_logits(ohem, autocast, monkeypatch):
    """ICNet's three heads (two coarse, upsampled to the labels inside the loss): the lean loss
    gives the same gradients and saves neither the upsampled logits nor their log-softmax; also
    with OHEM's hardest-pixel selection (threshold 0.05 keeps too few pixels, so top-k picks
    them) and under bfloat16 autocast."""
    topk_calls = [0]
    real_topk = torch.topk

    def counted_topk(*args, **kwargs):
        topk_calls[0] += 1
        return real_topk(*args, **kwargs)

    monkeypatch.setattr(torch, "topk", counted_topk)
    torch.manual_seed(0)
    plain = create_model("icnet", 4, filter_scale=0.125).train()
    lean = copy.deepcopy(plain)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    labels[:, :4] = 255
    criterion = pixel_loss(torch.tensor([0.5, 1.0, 2.0, 1.5]), 255, ohem, 0.9)
    weights = head_weights(plain, None)
    saved = {}
    for name, model in (("plain", plain), ("lean", lean)):
        total = [0]

        def pack(tensor, total=total):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, main = multi_head_loss(model, images, labels, criterion, weights, lean=name == "lean")
        loss.backward()
        saved[name] = total[0]
        assert main.shape[-2:] == labels.shape[-2:]
    full_resolution_logits = labels.numel() * 4 * 4  # float32, 4 classes
    assert saved["plain"] - saved["lean"] >= 4 * full_resolution_logits  # 3 log-softmaxes, 2 upsampled heads
    assert topk_calls[0] == (0 if ohem is None else 9)  # 3 heads: plain forward, lean forward and recompute
    tolerance = 1e-2 if autocast else 1e-6
    for (name, p), q in zip(plain.named_parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=tolerance, atol=tolerance, msg=name)
