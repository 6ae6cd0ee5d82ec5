"""The quantization spec and record: validated data stored in a model directory's config.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from edgeseg.schema import StrictModel


class QuantizeConfig(StrictModel):
    """How weights and activations are quantized (simulated in float, exported as integers).

    ``power-of-two``: caffe-jacinto's dynamic fixed point. Every tensor gets one scale
    2^-fl with integer length IL = ceil(log2 max|x|) (+1 sign bit when the tensor has
    negative values) and fl = bits - IL.
    ``float``: ONNX Runtime / TensorRT style. Symmetric weights with one float scale per
    output channel (max|w| / qmax); activations per tensor, asymmetric (zero point).
    ``low-bit``: Blueoil's scheme. 1-bit weights sign(W) x mean|W| (one scale per tensor,
    identity gradient) applied before the BatchNorm, so it trains from scratch; activations
    of every ReLU block clipped to [0, activation_max] on 2^bits - 1 even steps (2 bits:
    0, 2/3, 4/3, 2; straight-through gradient inside the range); the first layer and the
    classifier keep float weights. Defaults to 1-bit weights and 2-bit activations.
    """

    scheme: Literal["float", "power-of-two", "low-bit"] = "float"
    weight_bits: int = Field(8, ge=1, le=8)
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
    bias_correction: bool = Field(
        True, description="post-training: each conv's bias absorbs the mean output shift its weight rounding "
                          "causes, measured on the calibration images (not for low-bit)")
    stochastic_rounding: bool = Field(False, description="power-of-two scheme: round stochastically while training")
    activation_max: float = Field(
        2.0, gt=0, description="low-bit: activations are clipped to [0, activation_max] (Blueoil's "
                               "linear mid-tread half quantizer)")
    quantize_first_layer: bool = Field(
        True, description="false: the conv(s) reading the image keep float weights and a float input (Blueoil's "
                          "default; cheaper on CPUs where a 3-channel int8 conv is slow)")

    @model_validator(mode="before")
    @classmethod
    def _low_bit_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("scheme") == "low-bit":
            data = {"weight_bits": 1, "activation_bits": 2, "quantize_first_layer": False, **data}
        return data

    @model_validator(mode="after")
    def _bits_fit_the_scheme(self):
        if self.scheme == "low-bit" and self.weight_bits != 1:
            raise ValueError("the low-bit scheme has 1-bit weights (weight_bits: 1)")
        if self.scheme == "low-bit" and self.quantize_first_layer:
            raise ValueError("the low-bit scheme keeps the first layer in float (quantize_first_layer: false)")
        if self.scheme != "low-bit" and self.weight_bits < 2:
            raise ValueError(f"1-bit weights need the low-bit scheme, not '{self.scheme}'")
        return self

    @property
    def weight_qmax(self) -> int:
        """The largest weight level: 2^(bits-1) - 1, one bit less for the x86 target; 1 for the
        low-bit scheme's binary weights."""
        if self.scheme == "low-bit":
            return 1
        bits = self.weight_bits - 1 if self.target == "x86" and self.weight_bits == 8 else self.weight_bits
        return 2 ** (bits - 1) - 1


INPUT = "input"  # the point name of the model input


class QuantizationRecord(StrictModel):
    """What config.json stores under ``quantization``: the spec and where it applies, found
    once on the float model so that the quantized model rebuilds exactly."""

    spec: QuantizeConfig
    points: list[str] = Field(description="modules whose outputs are quantized, in the order they run")
    follow: dict[str, str] = Field(
        default_factory=dict, description="resizes that stay on the grid of the point that feeds them "
                                          "(name -> that point, or 'input')")
    float_layers: list[str] = Field(default_factory=list, description="convs that keep float weights")

    def short(self, exported: bool) -> str:
        """'int8 float w8/a8 x86' ('sim' instead of 'int8' before export)."""
        spec = self.spec
        return (f"{'int8' if exported else 'sim'} {spec.scheme} w{spec.weight_bits}/a{spec.activation_bits} "
                f"{spec.target}")
