"""The quantization spec: validated data stored in a model directory's config.json."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeseg.schema import StrictModel


class QuantizeConfig(StrictModel):
    """How weights and activations are quantized (simulated in float, exported as integers).

    ``power-of-two``: caffe-jacinto's dynamic fixed point. Every tensor gets one scale
    2^-fl with integer length IL = ceil(log2 max|x|) (+1 sign bit when the tensor has
    negative values) and fl = bits - IL.
    ``float``: ONNX Runtime / TensorRT style. Symmetric weights with one float scale per
    output channel (max|w| / qmax); activations per tensor, asymmetric (zero point).
    """

    scheme: Literal["float", "power-of-two"] = "float"
    weight_bits: int = Field(8, ge=2, le=8)
    activation_bits: int = Field(8, ge=2, le=8)
    bias_bits: int = Field(32, ge=8, le=32, description="integer engines keep conv biases at 32 bits (scale s_in x s_w)")
    target: Literal["x86", "full-range"] = Field(
        "x86", description="x86: weights use one bit less (|q| <= 63 at 8 bits) so that x86 CPUs without VNNI "
                           "cannot saturate their u8 x s8 pair sums; full-range: all 2^bits levels")
    calibration_batches: int = Field(
        20, ge=1, description="batches whose activation ranges are tracked before quantization starts "
                              "(caffe-jacinto's quantization_start_iter)")
    ema_momentum: float = Field(0.9, gt=0, lt=1, description="range tracking: new = m x old + (1 - m) x batch")
    freeze_ranges: bool = Field(True, description="keep the calibrated activation ranges fixed during fine-tuning")
    stochastic_rounding: bool = Field(False, description="power-of-two scheme: round stochastically while training")
    quantize_first_layer: bool = Field(
        True, description="false: the conv(s) reading the image keep float weights and a float input (Blueoil's "
                          "default; cheaper on CPUs where a 3-channel int8 conv is slow)")

    @property
    def weight_qmax(self) -> int:
        """The largest weight level: 2^(bits-1) - 1, one bit less for the x86 target."""
        bits = self.weight_bits - 1 if self.target == "x86" and self.weight_bits == 8 else self.weight_bits
        return 2 ** (bits - 1) - 1
