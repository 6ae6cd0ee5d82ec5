"""Dataset specs: ``camvid:PATH``, ``cityscapes:PATH``, ``voc:PATH``, ``folder:PATH``,
``list:PATH[,LABELS]``, ``synthetic[:N]`` or a dataset YAML file, resolved to a source."""

from __future__ import annotations

import difflib
import re
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from edgeseg.data.dataset import DatasetSource, SegmentationDataset, Transform
from edgeseg.data.groups import DEFAULT_RULES, group_rule, hold_out_group
from edgeseg.errors import ConfigError
from edgeseg.schema import StrictModel, load_yaml, validate

FORMATS = ("camvid", "cityscapes", "voc", "folder", "list", "synthetic")
Colour = tuple[int, int, int]


class ListPair(StrictModel):
    images: Path
    labels: Path


class DatasetConfig(StrictModel):
    """A dataset description; the YAML form of a spec. Paths are relative to the YAML file."""

    format: Literal["camvid", "cityscapes", "voc", "folder", "list", "synthetic"]
    root: Path | None = None
    classes: list[str] | Path | None = Field(None, description="class names, or a file with one per line")
    colormap: Path | None = Field(None, description="'R G B' per class line; maps RGB masks, sets the palette")
    palette: list[Colour] | None = None
    void_values: list[int] | None = Field(None, description="raw label values that are ignored")
    void_colours: list[Colour] = Field(default_factory=list, description="RGB mask colours that are ignored")
    splits: dict[str, Path | ListPair] = Field(default_factory=dict, description="list format: split -> list file(s)")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="held out when there is no val split")
    split_seed: int = 0
    allow_lossy_labels: bool = Field(
        False, description="accept JPEG label files (lossy: class ids blur at edges; the doctor still warns)")
    channels: Literal["rgb", "gray", "as_is"] = Field(
        "rgb", description="how images become the 3 channels every model takes: rgb converts to RGB; gray takes "
                           "the luminance (PIL's 'L') and copies it to all 3 channels; as_is keeps the stored "
                           "pixels, turning only palette/alpha/CMYK images into RGB (a grey file stays grey)")
    same_shape: bool = Field(
        False, description="every image and label must share one size: the doctor names each odd file, and "
                           "opening the dataset fails on the first")
    label_set: Literal["trainid", "jacinto5"] = Field("trainid", description="cityscapes: 19 classes or jacinto's 5")
    num_images: int = Field(64, ge=1, description="synthetic: training images (val and test get a quarter)")
    height: int = Field(240, ge=32)
    width: int = Field(320, ge=32)
    seed: int = 0
    group_by: str | None = Field(
        None, description="regex on file names whose first capture group (or whole match) names a sample's group "
                          "(video sequence, site); camvid groups by sequence without it")
    holdout_group: str | None = Field(
        None, validation_alias=AliasChoices("holdout_group", "holdout_sequence"),
        description="train+val pooled, this group becomes val and the rest train (leave-one-group-out); "
                    "holdout_sequence is the same key")

    @field_validator("group_by")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a regular expression ({err})") from None
        return value

    @model_validator(mode="after")
    def _holdout_needs_groups(self):
        if self.holdout_group is not None and self.group_by is None and self.format not in DEFAULT_RULES:
            raise ValueError(f"holdout_group: a {self.format} dataset needs group_by (a regex on file names, "
                             f"e.g. '^([^_]+)_') to tell the groups")
        return self

    @field_validator("void_values")
    @classmethod
    def _byte_values(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and any(not 0 <= v <= 255 for v in values):
            raise ValueError("void values must lie in 0..255")
        return values

    def rebase(self, base: Path) -> "DatasetConfig":
        """Resolve relative paths against ``base`` (the folder of the YAML file)."""
        def fix(p):
            if isinstance(p, ListPair):
                return ListPair(images=fix(p.images), labels=fix(p.labels))
            return p if p is None or p.is_absolute() else base / p
        return self.model_copy(update={
            "root": fix(self.root),
            "classes": fix(self.classes) if isinstance(self.classes, Path) else self.classes,
            "colormap": fix(self.colormap),
            "splits": {k: fix(v) for k, v in self.splits.items()},
        })


def parse_spec(spec: str) -> DatasetConfig:
    """Turn a spec string into a validated DatasetConfig (ConfigError on a bad spec)."""
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if scheme == "synthetic":
        if not sep:
            return DatasetConfig(format="synthetic")
        if not rest.isdigit() or int(rest) < 1:
            raise ConfigError(f"dataset spec '{spec}': synthetic takes a positive image count, e.g. synthetic:32")
        return DatasetConfig(format="synthetic", num_images=int(rest))
    if sep and scheme in FORMATS:
        if not rest:
            raise ConfigError(f"dataset spec '{spec}': a path must follow '{scheme}:'")
        if scheme == "list":
            files = [Path(p) for p in rest.split(",")]
            if len(files) > 2:
                raise ConfigError(f"dataset spec '{spec}': list takes PAIRS_FILE or IMAGES_FILE,LABELS_FILE")
            entry = files[0] if len(files) == 1 else ListPair(images=files[0], labels=files[1])
            return DatasetConfig(format="list", splits={"train": entry})
        return DatasetConfig(format=scheme, root=Path(rest))
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        data = load_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of dataset keys")
        return validate(DatasetConfig, data, str(path)).rebase(path.parent)
    if sep and len(scheme) > 1:
        close = difflib.get_close_matches(scheme, FORMATS, n=1)
        hint = f"did you mean '{close[0]}:'?" if close else f"valid formats: {', '.join(FORMATS)}"
        raise ConfigError(f"dataset spec '{spec}': unknown format '{scheme}' ({hint})")
    raise ConfigError(f"dataset spec '{spec}': expected FORMAT:PATH ({', '.join(FORMATS)}), "
                      f"synthetic[:N] or a dataset .yaml file")


def with_group_rule(spec: str, group_by: str) -> DatasetConfig:
    """``spec`` parsed, with ``group_by`` set (validated)."""
    return validate(DatasetConfig, {**parse_spec(spec).model_dump(), "group_by": group_by}, "--group-by")


def spec_record(spec: str | DatasetConfig) -> str | dict:
    """``spec`` as config.json and pipelines keep it: a spec string as it is, a dataset
    mapping (e.g. one holding out a drive) as its JSON form, so checks, calibration and
    later stages read the same images as training did."""
    return spec if isinstance(spec, str) else spec.model_dump(mode="json", exclude_defaults=True)


def open_source(spec: str | DatasetConfig | dict) -> DatasetSource:
    """Discover the dataset a spec names (its classes and splits); reads no pixels yet.
    ``spec``: a spec string, a DatasetConfig, or its mapping (as ``spec_record`` writes)."""
    from edgeseg.data.formats import OPENERS

    if isinstance(spec, dict):
        spec = validate(DatasetConfig, spec, "data.spec")
    config = parse_spec(spec) if isinstance(spec, str) else spec
    source = OPENERS[config.format](config)
    if hasattr(source, "group_rule"):
        source.group_rule = group_rule(config)
    if hasattr(source, "channels"):
        source.channels, source.same_shape = config.channels, config.same_shape
    elif config.channels != "rgb":
        raise ConfigError(f"channels: a {config.format} dataset is generated in RGB; '{config.channels}' "
                          f"applies to datasets read from files")
    if config.holdout_group is not None:
        source = _with_held_out_group(source, config)
    if isinstance(spec, str):
        source.spec = spec
    return source


def _with_held_out_group(source, config: DatasetConfig):
    if not hasattr(source, "splits"):
        raise ConfigError(f"holdout_group: a {config.format} dataset has no file names to group")
    rule = group_rule(config)
    splits = hold_out_group(source.splits, rule, config.holdout_group, source.spec)
    note = (f"val is group '{config.holdout_group}' ({len(splits['val'])} images, groups by '{rule}'); "
            f"train is the rest of train+val ({len(splits['train'])} images)")
    return replace(source, splits=splits, notes=[n for n in source.notes if not n.startswith("no val split")] + [note])


def open_dataset(spec: str | DatasetConfig | dict, split: str, transform: Transform | None = None,
                 cache: bool = False) -> SegmentationDataset:
    """The dataset of one split of ``spec``; every file must exist (DataError otherwise)."""
    return open_source(spec).dataset(split, transform=transform, cache=cache)
