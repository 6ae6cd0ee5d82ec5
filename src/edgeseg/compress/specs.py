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
    channel_multiple: int = Field(1, ge=1, description="round each layer's kept filters to the nearest multiple "
                                                       "(8 suits CPU kernels; 1: ICNet's int(n x keep))")
    target_macs: float | None = Field(
        None, gt=0, lt=1, description="instead of keep: the fraction of the model's MACs to keep, shared out per "
                                      "layer group by a sensitivity scan on val images (least predicted loss)")
    target_latency_ms: float | None = Field(
        None, gt=0, description="instead of keep: the fp32 ONNX Runtime latency (ms, at the model's input size, "
                                "on this machine) to reach, shared out as for target_macs")
    scan_ratios: list[float] = Field([0.75, 0.5, 0.25], min_length=1,
                                     description="keep ratios each layer group is cut to, alone, in the scan")
    scan_images: int = Field(16, ge=1, description="val images the scan scores (evenly spread over the split)")

    @model_validator(mode="after")
    def _one_way_to_choose(self):
        if self.target_macs is not None and self.target_latency_ms is not None:
            raise ValueError("give target_macs or target_latency_ms, not both")
        if self.targeted and "keep" in self.model_fields_set:
            raise ValueError("keep: give keep or a target (target_macs, target_latency_ms), not both")
        if any(not 0 < ratio < 1 for ratio in self.scan_ratios) or len(set(self.scan_ratios)) < len(self.scan_ratios):
            raise ValueError("scan_ratios: each ratio must lie strictly between 0 and 1, and appear once")
        return self

    @property
    def targeted(self) -> bool:
        return self.target_macs is not None or self.target_latency_ms is not None
