"""``edgeseg export --format bundle``: a folder that runs the model on a machine without
edgeseg (numpy, onnxruntime and Pillow), in the spirit of Blueoil's convert output::

    model.onnx        fp32, or int8 for a quantized model; checked like every export
    meta.yaml         classes, palette, input size, pre/post-processing, quantization
    run.py            images, folders, video and cameras (OpenCV when present)
    requirements.txt
    README.md
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from edgeseg.export.onnx import Tolerances, export_onnx
from edgeseg.fileio import atomic_replace_dir
from edgeseg.layout import BUNDLE_META, BUNDLE_MODEL, BUNDLE_RUNNER
from edgeseg.models.model_dir import read_model_config

REQUIREMENTS = "numpy>=1.24\nonnxruntime>=1.16\nPillow>=10\n# video and cameras: opencv-python-headless>=4.8\n"


def write_bundle(model_dir: str | Path, out: str | Path, size: tuple[int, int] | None, check_images,
                 tolerances: Tolerances = Tolerances()) -> dict:
    """Export ``model_dir`` (int8 when it is quantized) and write the bundle atomically."""
    config = read_model_config(model_dir)
    int8 = config.quantization is not None
    metrics: dict = {}

    def build(tmp: Path) -> None:
        metrics.update(export_onnx(model_dir, tmp / BUNDLE_MODEL, int8, size, check_images, tolerances))
        meta = {
            "TASK": "semantic-segmentation", "CLASSES": list(config.classes),
            "PALETTE": [list(c) for c in config.palette], "IGNORE_INDEX": config.ignore_index,
            "IMAGE_SIZE": metrics["size"], "DATA_FORMAT": "NCHW", "PRECISION": "int8" if int8 else "fp32",
            "PRE_PROCESSOR": [{"DivideBy255": {}}, {"Normalize": {"mean": list(config.mean), "std": list(config.std)}},
                              {"PadBottomRight": {"to": metrics["size"], "value": 0.0}}],
            "POST_PROCESSOR": [{"CropToInput": {}}, {"ArgMax": {"axis": 1}}],
            "QUANTIZATION": config.quantization.model_dump(mode="json") if config.quantization else None,
            "SOURCE_MODEL": Path(model_dir).name,
            "EXPORT_CHECK": {k: v for k, v in metrics.items() if k not in ("format", "size")},
            "EDGESEG_VERSION": config.edgeseg_version}
        (tmp / BUNDLE_META).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
        (tmp / BUNDLE_RUNNER).write_text(resources.files("edgeseg.export").joinpath("bundle_run.py").read_text("utf-8"),
                                    encoding="utf-8")
        (tmp / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
        (tmp / "README.md").write_text(_readme(config, metrics, int8), encoding="utf-8")

    atomic_replace_dir(build, out)
    return {**metrics, "format": "bundle"}


def _readme(config, metrics: dict, int8: bool) -> str:
    h, w = metrics["size"]
    return (f"# {config.architecture} segmentation bundle ({'int8' if int8 else 'fp32'})\n\n"
            f"Classes: {', '.join(config.classes)}. Input: RGB images up to {h}x{w} (smaller ones are padded).\n\n"
            "    pip install -r requirements.txt\n"
            "    python run.py -i path/to/images -o output --overlay\n"
            "    python run.py -i video.mp4 -o output      # needs opencv-python-headless\n\n"
            "Images are decoded and written on 2 threads while the model runs (--workers 0: one\n"
            "step after the other; the same files).\n"
            "output/<name>.png holds class ids as a paletted PNG. meta.yaml lists classes, palette,\n"
            "pre- and post-processing and the check this export passed against its source model.\n")
