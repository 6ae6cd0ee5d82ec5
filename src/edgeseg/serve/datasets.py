"""Datasets the server knows: ``WORKDIR/datasets/NAME/dataset.yaml`` (a dataset spec the CLI
reads), made from DIGITS' folder form or from any spec the CLI accepts."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edgeseg.data.imageio import CHANNELS
from edgeseg.data.spec import DatasetConfig, ListPair, open_source, parse_spec
from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.fileio import atomic_write_json, atomic_write_text
from edgeseg.serve.paths import PathGuard, safe_name

DATASET_YAML = "dataset.yaml"
META_JSON = "meta.json"


@dataclass
class FolderForm:
    """DIGITS' New Dataset > Segmentation form."""

    name: str
    image_folder: str
    label_folder: str
    val_mode: str = "percent"          # percent | folders
    val_percent: str = "10"
    val_image_folder: str = ""
    val_label_folder: str = ""
    classes_file: str = ""
    colormap: str = "label_image"      # label_image | text_file
    colormap_file: str = ""
    channels: str = "rgb"              # rgb | gray | as_is (DIGITS' RGB / L / none)
    same_shape: str = "no"             # yes | no


class DatasetStore:
    def __init__(self, root: Path, guard: PathGuard) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.guard = guard
        self._sources: dict[str, tuple[float, object]] = {}

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob(f"*/{DATASET_YAML}"))

    def folder(self, name: str) -> Path:
        folder = self.root / safe_name(name, "dataset")
        if not (folder / DATASET_YAML).is_file():
            raise ConfigError(f"dataset '{name}' not found")
        return folder

    def spec(self, name: str) -> str:
        """The spec string training and the doctor use: the dataset YAML's absolute path."""
        return str((self.folder(name) / DATASET_YAML).resolve())

    def meta(self, name: str) -> dict:
        path = self.folder(name) / META_JSON
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def set_meta(self, name: str, **changes) -> None:
        atomic_write_json(self.folder(name) / META_JSON, {**self.meta(name), **changes})

    def source(self, name: str):
        """The opened dataset (cached until its YAML changes)."""
        path = self.folder(name) / DATASET_YAML
        stamp = path.stat().st_mtime
        cached = self._sources.get(name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, open_source(str(path.resolve())))
            self._sources[name] = cached
        return cached[1]

    def delete(self, name: str) -> None:
        shutil.rmtree(self.folder(name))
        self._sources.pop(name, None)

    # ---- creation
    def _new_folder(self, name: str) -> Path:
        folder = self.root / safe_name(name, "dataset name")
        if folder.exists():
            raise ConfigError(f"dataset name: '{name}' already exists")
        return folder

    def _finish(self, folder: Path, config: dict, how: str) -> str:
        """Write dataset.yaml and check the dataset opens; on any error nothing is left."""
        try:
            atomic_write_text(folder / DATASET_YAML, yaml.safe_dump(config, sort_keys=False))
            open_source(str((folder / DATASET_YAML).resolve()))
            atomic_write_json(folder / META_JSON, {"created": time.time(), "how": how})
        except EdgesegError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except Exception as err:  # a file the loaders could not make sense of
            shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError(f"dataset: {type(err).__name__}: {err}") from None
        return folder.name

    def create_from_folders(self, form: FolderForm) -> str:
        """A folder-format dataset whose images/ and labels/ link to the chosen folders."""
        folder = self._new_folder(form.name)
        fields = {"image_folder": form.image_folder, "label_folder": form.label_folder}
        if form.val_mode == "folders":
            fields.update(val_image_folder=form.val_image_folder, val_label_folder=form.val_label_folder)
        elif form.val_mode != "percent":
            raise ConfigError("validation: choose a percentage or validation folders")
        resolved = {}
        for key, text in fields.items():
            path = self.guard.resolve(text, key.replace("_", " "))
            if not path.is_dir():
                raise ConfigError(f"{key.replace('_', ' ')}: '{text}' is not a folder")
            resolved[key] = path
        config: dict = {"format": "folder", "root": "."}
        if form.val_mode == "percent":
            try:
                percent = float(form.val_percent)
            except ValueError:
                raise ConfigError(f"% for validation: '{form.val_percent}' is not a number") from None
            if not 0 < percent < 100:
                raise ConfigError(f"% for validation: {percent} must lie between 0 and 100 (exclusive)")
            config["val_fraction"] = percent / 100
        if form.channels not in CHANNELS:
            raise ConfigError("channel conversion: choose RGB, grayscale (L) or none (as stored)")
        if form.same_shape not in ("yes", "no"):
            raise ConfigError("enforce same shape: choose yes or no")
        config["channels"] = form.channels
        config["same_shape"] = form.same_shape == "yes"
        classes = self.guard.resolve(form.classes_file, "class labels file") if form.classes_file.strip() else None
        colormap = None
        if form.colormap == "text_file":
            colormap = self.guard.resolve(form.colormap_file, "colormap file")
        elif form.colormap != "label_image":
            raise ConfigError("colormap: choose 'from label image' or 'from text file'")
        for path, what in ((classes, "class labels file"), (colormap, "colormap file")):
            if path is not None and not path.is_file():
                raise ConfigError(f"{what}: '{path}' is not a file")
        folder.mkdir(parents=True)
        try:
            for split, images, labels in (("train", "image_folder", "label_folder"),
                                          ("val", "val_image_folder", "val_label_folder")):
                if images in resolved:
                    (folder / split).mkdir()
                    (folder / split / "images").symlink_to(resolved[images], target_is_directory=True)
                    (folder / split / "labels").symlink_to(resolved[labels], target_is_directory=True)
            if classes is not None:
                config["classes"] = str(classes)
            if colormap is not None:
                config["colormap"] = str(colormap)
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError(f"dataset: cannot create {folder.name} ({err})") from None
        return self._finish(folder, config, "folders")

    def create_from_spec(self, name: str, spec: str) -> str:
        """A dataset from any spec the CLI accepts, its paths checked against the roots."""
        folder = self._new_folder(name)
        spec, config = self.resolve_spec(spec)
        folder.mkdir(parents=True)
        return self._finish(folder, config.model_dump(mode="json", exclude_defaults=True) | {"format": config.format},
                            f"spec {spec}")

    def resolve_spec(self, spec: str) -> tuple[str, DatasetConfig]:
        """(the spec with absolute paths, its config); ConfigError when a path leaves the roots."""
        spec = spec.strip()
        scheme, sep, rest = spec.partition(":")
        if spec.lower().endswith((".yaml", ".yml")):
            spec = str(self.guard.resolve(spec, "dataset spec"))
        elif sep and scheme != "synthetic" and rest:
            parts = [str(self.guard.resolve(p, "dataset spec")) for p in rest.split(",")]
            spec = f"{scheme}:{','.join(parts)}"
        config = parse_spec(spec)
        self._check_paths(config)
        return spec, config

    def _check_paths(self, config: DatasetConfig) -> None:
        paths = [config.root, config.colormap, config.classes if isinstance(config.classes, Path) else None]
        for entry in config.splits.values():
            paths += [entry.images, entry.labels] if isinstance(entry, ListPair) else [entry]
        for path in paths:
            if path is not None:
                self.guard.resolve(path, "dataset spec", must_exist=False)


def colourise(label: np.ndarray, classes) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) RGB in the class colours."""
    return classes.colour_lut()[label]
