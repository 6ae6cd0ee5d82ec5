"""caffe-jacinto's ``snapshot_log``: per tensor, the grid it is stored on; per conv, whether an
integer engine can run it with one right shift (fl_in + fl_w >= fl_out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgeseg.compress.quant.graph import activation_quantizers, probe
from edgeseg.models.quantizers import ActivationQuantizer
from edgeseg.models.blocks import ConvBNAct


@dataclass
class TensorRow:
    name: str
    bits: int
    signed: bool
    min: float
    max: float
    scale: float
    zero_point: int
    fraction_length: int | None


@dataclass
class ConvRow:
    name: str
    weight_bits: int
    weight_max_level: int
    weight_scale_min: float
    weight_scale_max: float
    weight_fraction_length: int | None
    input: str | None
    output: str | None
    input_fraction_length: int | None
    output_fraction_length: int | None
    shift_ok: bool | None  # power-of-two only: fl_in + fl_w >= fl_out


@torch.no_grad()
def quantization_snapshot(model: nn.Module, example: torch.Tensor) -> dict:
    """Tables of every activation grid and every quantized conv. ``example`` is one normalised
    (1, 3, H, W) image; it is run once to see which quantized tensor feeds each conv."""
    quantizers = dict(activation_quantizers(model))
    names = {id(q): name for name, q in quantizers.items()}
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # keeps ids unique while the forward runs
    conv_inputs: dict[str, str | None] = {}

    def record_output(module, inputs, output):
        produced[id(output)] = names[id(module)]
        keep.append(output)

    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ConvBNAct) and m.weight_quantizer}
    handles = [q.register_forward_hook(record_output) for q in quantizers.values()]
    handles += [block.register_forward_pre_hook(lambda m, args, name=name: conv_inputs.__setitem__(
        name, produced.get(id(args[0])))) for name, block in blocks.items()]
    probe(model, handles, example)

    tensors = {name: _tensor_row(name, q) for name, q in quantizers.items()}
    convs = []
    for name, block in blocks.items():
        wq = block.weight_quantizer
        scales = wq.scales(block.conv.weight)
        fl_w = wq.fraction_length(block.conv.weight) if wq.scheme == "power-of-two" else None
        source, output = conv_inputs.get(name), (name if name in quantizers else None)
        fl_in = tensors[source].fraction_length if source else None
        fl_out = tensors[output].fraction_length if output else None
        shift_ok = None
        if None not in (fl_w, fl_in, fl_out):
            shift_ok = fl_in + fl_w >= fl_out
        convs.append(ConvRow(name, wq.bits, wq.qmax, float(scales.min()), float(scales.max()), fl_w, source, output,
                             fl_in, fl_out, shift_ok))
    return {"tensors": [asdict(row) for row in tensors.values()], "convs": [asdict(row) for row in convs]}


def _tensor_row(name: str, quantizer: ActivationQuantizer) -> TensorRow:
    grid = quantizer.grid()
    return TensorRow(name, quantizer.bits, grid.signed, float(quantizer.min_val), float(quantizer.max_val),
                     grid.scale, grid.zero_point, grid.fraction_length)


def snapshot_text(snapshot: dict) -> str:
    """The snapshot as two aligned plain-text tables."""
    lines = [f"{'tensor':<36} {'bits':>4} {'signed':>6} {'min':>10} {'max':>10} {'scale':>11} {'zp':>4} {'fl':>4}"]
    for row in snapshot["tensors"]:
        fl = "" if row["fraction_length"] is None else row["fraction_length"]
        lines.append(f"{row['name']:<36} {row['bits']:>4} {str(row['signed']):>6} {row['min']:>10.4g} "
                     f"{row['max']:>10.4g} {row['scale']:>11.4g} {row['zero_point']:>4} {fl:>4}")
    lines += ["", f"{'conv':<36} {'w bits':>6} {'|q|max':>6} {'w scale min..max':>22} {'fl_w':>5} "
                  f"{'fl_in':>5} {'fl_out':>6} {'shift ok':>8}  input"]
    for row in snapshot["convs"]:
        blank = lambda v: "" if v is None else v  # noqa: E731
        lines.append(f"{row['name']:<36} {row['weight_bits']:>6} {row['weight_max_level']:>6} "
                     f"{row['weight_scale_min']:>10.4g}..{row['weight_scale_max']:<10.4g} "
                     f"{blank(row['weight_fraction_length']):>5} {blank(row['input_fraction_length']):>5} "
                     f"{blank(row['output_fraction_length']):>6} {str(blank(row['shift_ok'])):>8}  "
                     f"{row['input'] or '(float)'}")
    return "\n".join(lines) + "\n"
