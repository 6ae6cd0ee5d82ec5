"""Gradient checkpointing (the seed's ``train_mem_saving.py``): named submodules keep only
their inputs during a training forward and run again in the backward pass.

An architecture declares its default modules to checkpoint (ends of backbone stages, the
pyramid module, fusion units) as the class attribute ``checkpoint_modules``; the training
config's ``memory_saving`` is ``true`` (those defaults) or a list of module names.

Only the instances' ``forward`` changes, and only while the module is in train mode with
gradients on: evaluation, export and the state dict are untouched. The recomputation in the
backward pass restores the module's buffers afterwards, so BatchNorm running statistics (and
its batch counter) are updated once per step, as without checkpointing. Non-reentrant
checkpointing (``use_reentrant=False``) replays the autocast state of the forward and
accumulates each parameter's gradient once, so it works under AMP and DDP.
"""

from __future__ import annotations

import contextlib
import difflib
import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from edgeseg.errors import ConfigError


def default_checkpoint_modules(model: nn.Module) -> tuple[str, ...]:
    """The module names ``model``'s architecture declares for ``memory_saving: true``."""
    return tuple(getattr(type(model), "checkpoint_modules", ()))


def resolve_checkpoint_modules(model: nn.Module, setting: bool | list[str], architecture: str) -> list[str]:
    """The module names to checkpoint for the config value ``setting`` (``memory_saving``);
    a ConfigError names an unknown module and the closest real ones."""
    if setting is False:
        return []
    names = list(default_checkpoint_modules(model)) if setting is True else list(setting)
    if setting is True and not names:
        raise ConfigError(f"memory_saving: architecture '{architecture}' declares no modules to checkpoint; "
                          f"list some instead, e.g. memory_saving=[{_examples(model)}]")
    known = {name for name, _ in model.named_modules() if name}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"top-level modules: {_examples(model)}"
            raise ConfigError(f"memory_saving: '{architecture}' has no module '{name}'; {hint}")
    return names


def _examples(model: nn.Module) -> str:
    return ",".join(name for name, _ in model.named_children())


def enable_checkpointing(model: nn.Module, names: list[str]) -> None:
    """Checkpoint each named submodule of ``model`` in training forwards (in place)."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        module.forward = types.MethodType(_checkpointed_forward, module)  # a bound method survives deepcopy


def disable_checkpointing(model: nn.Module) -> None:
    """Undo ``enable_checkpointing``."""
    for module in model.modules():
        if getattr(module.forward, "__func__", None) is _checkpointed_forward:
            del module.forward


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    plain = type(self).forward
    if not (self.training and torch.is_grad_enabled()):
        return plain(self, *args, **kwargs)
    return checkpoint(plain, self, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _buffers_restored(self)), **kwargs)


@contextlib.contextmanager
def _buffers_restored(module: nn.Module):
    """Around the recomputation: put every buffer back as the first forward left it."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
