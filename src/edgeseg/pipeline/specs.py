"""The settings of each kind of pipeline stage, as validated data (no PyTorch needed to read
them: the command line builds its options from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from edgeseg.compress.specs import PruneConfig, ThresholdConfig
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.schema import StrictModel

DEFAULT_KEEP = {"train": "best", "l1": "last", "sparse": "best"}
ImageSide = Annotated[int, Field(ge=8, le=16384)]


class TrainStage(StrictModel):
    stage: Literal["train", "l1", "sparse"]
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's train section")
    keep: Literal["best", "last"] | None = Field(
        None, description="the model the stage hands on: best val mIoU or the last epoch (default: best; l1: last)")
    init: Literal["continue", "weights"] = Field(
        "continue", description="how the stage starts from the previous stage's model: continue it as it is "
                                "(architecture, widths, weights), or build this stage's train.model and copy the "
                                "tensors whose names and shapes match (two-stage training: PSPNet into ICNet)")

    @property
    def kept(self) -> str:
        return self.keep or DEFAULT_KEEP[self.stage]


class ThresholdStage(ThresholdConfig):
    stage: Literal["threshold"] = "threshold"

    def threshold_config(self) -> ThresholdConfig:
        return ThresholdConfig(**self.model_dump(exclude={"stage"}))


class PruneStage(PruneConfig):
    stage: Literal["prune"] = "prune"

    def prune_config(self) -> PruneConfig:
        return PruneConfig(**self.model_dump(exclude={"stage"}, exclude_unset=True))


class FoldStage(StrictModel):
    stage: Literal["fold-bn"] = "fold-bn"
    check_images: int = Field(4, ge=1, description="images the folded model is checked on")


class QuantizeStage(StrictModel):
    stage: Literal["quantize"] = "quantize"
    quantization: QuantizeConfig = Field(default_factory=QuantizeConfig)
    train: dict[str, Any] | None = Field(
        None, description="quantization-aware fine-tuning: overrides of the recipe's train section over "
                          "5 epochs at lr 1e-5 (absent: calibration only)")
    keep: Literal["best", "last"] = Field(
        "best", description="the fine-tuned model handed on: best val mIoU, or the last epoch (choose 'last' "
                            "when val is the held-out data the report scores, so nothing is picked on it)")


class ExportStage(StrictModel):
    stage: Literal["export"] = "export"
    format: Literal["onnx", "onnx-int8", "bundle"] | None = Field(
        None, description="onnx, onnx-int8 or bundle (default: onnx-int8 for a quantized model, else onnx)")
    size: tuple[ImageSide, ImageSide] | None = Field(None, description="fixed input height and width (default: the size of "
                                                           "the dataset's images)")
    dynamic: bool = Field(False, description="onnx, onnx-int8: any height and width (multiples of the output "
                                             "stride) instead of a fixed size")
    check_images: int = Field(8, ge=1, description="images the export is checked on")
    min_agreement: float = Field(0.98, gt=0, le=1, description="int8: least pixel agreement with PyTorch")

    @model_validator(mode="after")
    def _bundles_are_fixed(self):
        if self.dynamic and self.format == "bundle":
            raise ValueError("dynamic: only for format onnx or onnx-int8; a bundle has a fixed input size")
        return self


class ConvolutionalizeStage(StrictModel):
    stage: Literal["convolutionalize"] = "convolutionalize"
    weights: str = Field(min_length=1, description="torchvision-layout AlexNet state dict: .safetensors or .pth (read "
                                                   "with weights_only), or an explicit http(s) URL")
    classes: str | None = Field(None, description="voc, camvid, cityscapes or a class-labels file (default: the "
                                                  "dataset's classes)")


Stage = TrainStage | ThresholdStage | PruneStage | FoldStage | QuantizeStage | ExportStage | ConvolutionalizeStage
