"""Where quantizers sit in a model built from edgeseg blocks, attaching them, calibrating.

Quantized like an integer engine stores tensors (REFERENCE.md section 1): the model input,
every conv's weights, and the outputs of every ConvBNAct (after its activation), Add,
Concat, Upsample, pooling, free activation and per-channel affine module, except the
model's own output, which stays float. The list of those modules ("points") is found once
by running the model and is stored in config.json, so a model directory rebuilds exactly.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from edgeseg.models.blocks import (AdaptiveAvgPool, Add, Concat, ConvBNAct, DepthToSpace, FixedBilinearDeconv,
                                   SpaceToDepth, Upsample)
from edgeseg.models.folded import ChannelAffine
from edgeseg.models.quant_spec import INPUT
from edgeseg.models.quantizers import ActivationQuantizer

GRID_KEEPING = (Upsample, SpaceToDepth, DepthToSpace)  # resizes and rearrangements stay on their input's grid
OUTPUT_KINDS = (ConvBNAct, Add, Concat, *GRID_KEEPING, AdaptiveAvgPool, FixedBilinearDeconv, ChannelAffine,
                nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.PReLU, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d)


@torch.no_grad()
def probe(model: nn.Module, handles: list, example: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """Run ``model`` once in eval mode on ``example`` (a (1, 3, H, W) tensor, or an (H, W)
    size for zeros) with the hook ``handles`` registered for this run, then remove them and
    restore the model's mode. Returns the output."""
    if not isinstance(example, torch.Tensor):
        example = torch.zeros(1, 3, *example, device=next(model.parameters()).device)
    was_training = model.training
    try:
        model.eval()
        return model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _inside_block(name: str, blocks: list[str]) -> bool:
    return any(name.startswith(block + ".") for block in blocks)


@torch.no_grad()
def quantization_points(model: nn.Module, input_size: tuple[int, int]) -> tuple[list[str], dict[str, str], list[str]]:
    """The modules whose outputs get quantized (see the module docstring), in the order they
    run on a (1, 3, H, W) input; the resizes among them that stay on the grid of the point
    that feeds them (name -> that point); and the first layers (the ConvBNActs reading the
    model input). The model's output stays float."""
    blocks = [name for name, module in model.named_modules() if isinstance(module, ConvBNAct)]
    candidates = {name: module for name, module in model.named_modules()
                  if isinstance(module, OUTPUT_KINDS) and not _inside_block(name, blocks)}
    ran: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    handles = [module.register_forward_hook(lambda m, i, o, name=name: ran.append((name, i[0] if i else None, o)))
               for name, module in candidates.items()]
    image = torch.zeros(1, 3, *input_size, device=next(model.parameters()).device)
    output = probe(model, handles, image)
    producer = {id(image): INPUT}
    calls = {name: sum(entry[0] == name for entry in ran) for name in candidates}
    points, follow = [], {}
    first = sorted({name for name, source, _ in ran if source is image and isinstance(candidates[name], ConvBNAct)})
    for name, source, tensor in ran:
        fed_by = producer.get(id(source)) if source is not None else None
        if tensor is output:
            continue
        if isinstance(candidates[name], GRID_KEEPING) and fed_by is not None and calls[name] == 1:
            follow[name] = fed_by
        if name not in points:
            points.append(name)
        producer[id(tensor)] = name
    return points, follow, first


@torch.no_grad()
def low_bit_layout(model: nn.Module, input_size: tuple[int, int]) -> tuple[list[str], dict[str, str], list[str]]:
    """Where Blueoil's low-bit scheme quantizes: the outputs of the ReLU ConvBNActs (the
    quantizer takes the ReLU's place, clipping to [0, max]) and of the space/depth
    rearrangements of those (on their input's grid: name -> source), and which layers keep float
    weights: the first conv to run (and any other reading the image) and the classifier (the
    last conv to run)."""
    points, follow, first = quantization_points(model, input_size)
    modules = dict(model.named_modules())
    relu_blocks = [name for name in points if isinstance(modules[name], ConvBNAct)
                   and isinstance(modules[name].act, nn.ReLU)]
    rearranged = {name: source for name, source in follow.items()
                  if source in relu_blocks and isinstance(modules[name], (SpaceToDepth, DepthToSpace))}
    order: list[str] = []
    handles = [module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
               for name, module in modules.items() if isinstance(module, ConvBNAct)]
    probe(model, handles, input_size)
    kept = [name for name in points if name in relu_blocks or name in rearranged]
    return kept, rearranged, sorted({*first, order[0], order[-1]})


def activation_quantizers(model: nn.Module) -> Iterator[tuple[str, ActivationQuantizer]]:
    """(point name, quantizer); the model input is named 'input'."""
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuantizer):
            owner = name.rsplit(".", 1)[0] if "." in name else INPUT
            yield owner, module


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Within: every activation quantizer tracks the ranges it sees, in any mode."""
    quantizers = [q for _, q in activation_quantizers(model)]
    for quantizer in quantizers:
        quantizer.calibrating = True
    try:
        yield
    finally:
        for quantizer in quantizers:
            quantizer.calibrating = False


@torch.no_grad()
def calibrate(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Track activation ranges over ``images`` (normalised (1, 3, H, W) batches) with the float
    model, then switch quantization on. Returns the number of batches seen."""
    was_training = model.training
    model.eval()
    seen = 0
    with calibrating(model):
        for _, quantizer in activation_quantizers(model):
            quantizer.enabled.zero_()
        for batch in images:
            model(batch)
            seen += 1
    if seen == 0:
        raise ValueError("calibration needs at least one image")
    for _, quantizer in activation_quantizers(model):
        quantizer.enabled.fill_(1)
    model.train(was_training)
    return seen


@torch.no_grad()
def bake_weights(model: nn.Module) -> None:
    """Replace every quantized conv weight by its quantized value (and remember its scales),
    as export needs: the stored float weights are then exactly the int8 levels times scale."""
    for module in model.modules():
        if isinstance(module, ConvBNAct) and module.weight_quantizer is not None:
            module.conv.weight.copy_(module.weight_quantizer.bake(module.conv.weight))

