"""Test one / test many (input | prediction | overlay | ground truth with per-image mIoU)
through the predict package, for model directories, ONNX files and bundles; exports and
zip downloads of what a job made."""

from __future__ import annotations

import base64
import io
import math
import zipfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from PIL import Image

from edgeseg.data.imageio import list_images, read_image
from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.layout import BEST_DIR, BUNDLE_MODEL, CONFIG_NAME
from edgeseg.serve.jobs import PIPELINE_DIR, RUN_DIR
from edgeseg.serve.paths import safe_name

MAX_UPLOAD = 20 * 1024 * 1024
MAX_MANY = 48
EXPORT_FORMATS = {"onnx": "model.onnx", "bundle": "bundle"}


def model_choices(server) -> dict[str, Path]:
    """'JOB/what' -> a model directory, .onnx file or bundle a finished job made."""
    choices: dict[str, Path] = {}
    for job in server.jobs.all():
        folder = server.jobs.root / job["id"]
        if job["kind"] == "train" and (folder / RUN_DIR / BEST_DIR / CONFIG_NAME).is_file():
            choices[f"{job['id']}/{RUN_DIR}/{BEST_DIR}"] = folder / RUN_DIR / BEST_DIR
        elif job["kind"] == "recipe":
            for config in sorted((folder / PIPELINE_DIR).glob(f"stages/*/model/{CONFIG_NAME}")):
                choices[str(config.parent.relative_to(server.jobs.root))] = config.parent
        elif job["kind"] == "export" and job["state"] == "done":
            choices[f"{job['id']}/{job['output']}"] = folder / job["output"]
    return choices


def png_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_miou(prediction: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int) -> float:
    """Mean IoU over the classes present in the prediction or the ground truth of one image."""
    valid = truth != ignore
    ious = []
    for c in range(num_classes):
        p, t = (prediction == c) & valid, (truth == c) & valid
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return float(np.mean(ious)) if ious else math.nan


def zip_bytes(path: Path) -> bytes:
    """A folder (or one file) as a zip whose entries sit under the path's name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            archive.write(file, Path(path.name) / file.relative_to(path) if path.is_dir() else path.name)
    return buffer.getvalue()


def add_routes(app: FastAPI, server) -> None:
    predictors: dict[tuple, object] = {}

    def predictor(key: str):
        from edgeseg.predict.predictors import load_predictor
        import torch

        choices = model_choices(server)
        if key not in choices:
            raise ConfigError(f"model: '{key}' is not a finished job's model")
        path = choices[key]
        stamp = (path / CONFIG_NAME if path.is_dir() and (path / CONFIG_NAME).exists() else
                 path / BUNDLE_MODEL if path.is_dir() else path).stat().st_mtime
        if (key, stamp) not in predictors:
            predictors.clear()
            predictors[(key, stamp)] = load_predictor(path, torch.device("cpu"))
        return predictors[(key, stamp)]

    def render(form: dict, error: str = "", results=None, legend=None, status: int = 200):
        return server.page("test.html", status=status, form=form, error=error, results=results or [],
                           legend=legend or [], models=list(model_choices(server)), datasets=server.datasets.names())

    def predict_one(model, rgb: np.ndarray, name: str, truth, classes_for_truth, form) -> dict:
        from edgeseg.predict.outputs import overlay
        from edgeseg.predict.predictors import label_map

        if form.get("resize") == "model":
            size = getattr(model, "size", None) or tuple(model.config.input_size)
            rgb = np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
            if truth is not None:
                truth = np.array(Image.fromarray(truth).resize((size[1], size[0]), Image.NEAREST))
        label = label_map(model, rgb)
        classes = model.classes
        if form.get("colormap") == "none":
            scale = 255 // max(1, classes.num_classes - 1)
            coloured = np.repeat((label.astype(np.uint16) * scale).clip(0, 255).astype(np.uint8)[..., None], 3, 2)
        else:
            palette_classes = classes_for_truth if form.get("colormap") == "paired" and classes_for_truth else classes
            coloured = palette_classes.colour_lut()[label]
        row = {"name": name, "input": png_uri(rgb), "prediction": png_uri(coloured),
               "overlay": png_uri(overlay(rgb, label, classes)), "truth": None, "miou": None}
        if truth is not None:
            row["truth"] = png_uri(classes.colour_lut()[truth])
            row["miou"] = image_miou(label, truth, classes.num_classes, classes.ignore_index)
        return row

    @app.get("/test", response_class=HTMLResponse)
    def test_page(model: str = ""):
        return render({"model": model, "colormap": "dataset", "resize": "none", "source": "upload", "dataset": "",
                       "split": "val", "index": "0", "count": "8", "folder": ""})

    @app.post("/test", response_class=HTMLResponse)
    async def run_test(request: Request):
        data = await request.form()
        form = {k: v for k, v in data.items() if isinstance(v, str)}
        try:
            model = predictor(form.get("model", ""))
            results = []
            source = form.get("source", "upload")
            if source == "upload":
                uploads = [u for u in data.getlist("image") if hasattr(u, "read") and u.filename]
                if not uploads:
                    raise ConfigError("image: choose one or more files to upload")
                if len(uploads) > MAX_MANY:
                    raise ConfigError(f"image: {len(uploads)} files chosen; at most {MAX_MANY} at once")
                for upload in uploads:
                    name = upload.filename or "upload"
                    results.append(predict_one(model, decode_upload(await read_upload(upload, name), name),
                                               name, None, None, form))
            elif source == "list":
                upload = data.get("list_file")
                if not hasattr(upload, "read"):
                    raise ConfigError("list file: choose a text file with one image path per line")
                for path in listed_paths(await read_upload(upload, "list file"), server.guard):
                    results.append(predict_one(model, read_image(path), path.name, None, None, form))
            elif source in ("dataset", "dataset_many"):
                source_data = server.datasets.source(form.get("dataset", ""))
                dataset = source_data.dataset(form.get("split", "val"), check_files=False)
                first = _int(form.get("index", "0"), "index")
                count = 1 if source == "dataset" else min(MAX_MANY, max(1, _int(form.get("count", "8"), "count")))
                if not 0 <= first < len(dataset):
                    raise ConfigError(f"index: {first} is outside 0..{len(dataset) - 1}")
                for index in range(first, min(len(dataset), first + count)):
                    rgb, truth = dataset.read(index)
                    results.append(predict_one(model, rgb, dataset.sample_name(index), truth, source_data.classes, form))
            elif source == "folder":
                folder = server.guard.resolve(form.get("folder", ""), "folder")
                paths = (list_images(folder) if folder.is_dir() else
                         listed_paths(folder.read_bytes()[:MAX_UPLOAD], server.guard) if folder.suffix == ".txt"
                         else [folder])
                if not paths:
                    raise ConfigError(f"folder: no images in {folder}")
                for path in paths[:MAX_MANY]:
                    results.append(predict_one(model, read_image(path), path.name, None, None, form))
            else:
                raise ConfigError("source: choose upload, a dataset image, dataset images or a folder")
        except EdgesegError as err:
            return render(form, str(err), status=400)
        classes = model.classes
        legend = [(n, "#%02x%02x%02x" % tuple(c)) for n, c in zip(classes.names, classes.palette)]
        return render(form, results=results, legend=legend)

    @app.post("/jobs/{job_id}/export")
    async def export(job_id: str, request: Request):
        form = await request.form()
        kind = str(form.get("format", "onnx"))
        if kind not in EXPORT_FORMATS:
            raise ConfigError(f"format: choose one of {', '.join(EXPORT_FORMATS)}")
        key = str(form.get("model", f"{job_id}/{RUN_DIR}/{BEST_DIR}"))
        choices = model_choices(server)
        if key not in choices or not key.startswith(job_id + "/"):
            raise ConfigError(f"job {job_id} has no model '{key}' yet (it appears when the first epoch is evaluated)")
        job = server.jobs.create("export", f"export {kind} of {key}", {}, parent=job_id, model=str(choices[key]),
                                 output=EXPORT_FORMATS[kind], format=kind)
        return RedirectResponse(f"/jobs/{job['id']}", status_code=303)

    @app.get("/jobs/{job_id}/download/{what}.zip")
    def download(job_id: str, what: str):
        folder = server.jobs.dir(job_id)
        job = server.jobs.get(job_id)
        what = safe_name(what, "download")
        if what == "model" and job["kind"] == "train":
            path = folder / RUN_DIR / BEST_DIR
        elif what == "export" and job["kind"] == "export" and job["state"] == "done":
            path = folder / job["output"]
        else:
            raise ConfigError(f"job {job_id}: nothing to download as '{what}'")
        if not path.exists():
            raise ConfigError(f"job {job_id}: {path.name} does not exist yet")
        return Response(zip_bytes(path), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}-{path.name}.zip"'})


async def read_upload(upload, what: str) -> bytes:
    payload = await upload.read(MAX_UPLOAD + 1)
    if len(payload) > MAX_UPLOAD:
        raise ConfigError(f"{what}: larger than {MAX_UPLOAD // 2**20} MB")
    return payload


def listed_paths(text: bytes, guard) -> list[Path]:
    """The image paths of a list file (one per line; blank lines and '#' comments skipped), each
    through the path guard (relative paths are taken from the workdir)."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError("list file: not UTF-8 text (one image path per line)") from None
    entries = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise ConfigError("list file: no image paths in it")
    if len(entries) > MAX_MANY:
        raise ConfigError(f"list file: {len(entries)} paths; at most {MAX_MANY} at once")
    paths = []
    for number, entry in entries:
        path = guard.resolve(entry, f"list file line {number}")
        if not path.is_file():
            raise ConfigError(f"list file line {number}: '{entry}' is not a file")
        paths.append(path)
    return paths


def decode_upload(payload: bytes, name: str = "image") -> np.ndarray:
    """An uploaded image as (H, W, 3) uint8 RGB; anything PIL cannot read is a ConfigError."""
    from edgeseg.data.imageio import upright

    try:
        image = Image.open(io.BytesIO(payload))
        if image.width * image.height > 40_000_000:
            raise ConfigError(f"{name}: more than 40 megapixels")
        return np.array(upright(image).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        raise ConfigError(f"{name}: not an image file PIL can read (PNG, JPEG, BMP, ...)") from None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what}: '{text}' is not a whole number") from None
