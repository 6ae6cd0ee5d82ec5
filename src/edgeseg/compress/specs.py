"""The settings of the compression passes, as validated data (no PyTorch needed to read them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgeseg.schema import StrictModel


class ThresholdConfig(StrictModel):
    fraction_low: float = Field(0.40, ge=0, le=1, description="target zero fraction, small layers")
    fraction_mid: float = Field(0.80, ge=0, le=1, description="target zero fraction, ni >= 32 and no >= 32")
    fraction_high: float = Field(0.80, ge=0, le=1, description="target zero fraction, ni >= 256 and no >= 512")
    value_max: float = Field(0.2, gt=0, description="absolute cap on the threshold")
    value_maxratio: float = Field(0.2, gt=0, le=1, description="cap on the threshold as a fraction of max|w|")
    step_factor: float = Field(1e-6, gt=0, lt=1, description="search step as a fraction of max|w|")
    per_channel: bool = Field(False, description="threshold each output channel on its own")


class PruneConfig(StrictModel):
    keep: float = Field(0.5, gt=0, le=1, description="fraction of filters each layer keeps, int(n x keep), at "
                                                      "least 1 (ICNet's compression factor)")
    criterion: Literal["l1", "l2", "bn-scale"] = Field(
        "l1", description="filter importance: l1 or l2 norm of its weights, or |BatchNorm scale|")
    skip: list[str] = Field(default_factory=list, description="conv names or glob patterns (as edgeseg info lists "
                                                              "them) whose filters are all kept")
    soft: bool = Field(False, description="zero the pruned filters (and their BatchNorm scale and shift) "
                                          "instead of removing them, to evaluate a cut before committing")
    target_macs: float | None = Field(None, description="not available yet: use keep")
    target_latency_ms: float | None = Field(None, description="not available yet: use keep")

    @model_validator(mode="after")
    def _targets_not_yet(self):
        for key in ("target_macs", "target_latency_ms"):
            if getattr(self, key) is not None:
                raise ValueError(f"{key}: not available yet (sensitivity-based allocation is planned); use keep")
        return self
