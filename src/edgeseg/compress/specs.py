"""The settings of the compression passes, as validated data (no PyTorch needed to read them)."""

from __future__ import annotations

from pydantic import Field

from edgeseg.schema import StrictModel


class ThresholdConfig(StrictModel):
    fraction_low: float = Field(0.40, ge=0, le=1, description="target zero fraction, small layers")
    fraction_mid: float = Field(0.80, ge=0, le=1, description="target zero fraction, ni >= 32 and no >= 32")
    fraction_high: float = Field(0.80, ge=0, le=1, description="target zero fraction, ni >= 256 and no >= 512")
    value_max: float = Field(0.2, gt=0, description="absolute cap on the threshold")
    value_maxratio: float = Field(0.2, gt=0, le=1, description="cap on the threshold as a fraction of max|w|")
    step_factor: float = Field(1e-6, gt=0, lt=1, description="search step as a fraction of max|w|")
    per_channel: bool = Field(False, description="threshold each output channel on its own")
