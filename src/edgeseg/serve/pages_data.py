"""Dataset pages: DIGITS' New Dataset form (or any spec the CLI accepts), the dataset page
with the label doctor's report, and Explore (paged thumbnails beside colourised labels)."""

from __future__ import annotations

import io
import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from PIL import Image

from edgeseg.errors import EdgesegError
from edgeseg.serve.datasets import FolderForm, colourise
from edgeseg.serve.jobs import DOCTOR_JSON

PAGE_SIZE = 12
THUMB = 160


def thumbnail_png(array: np.ndarray, nearest: bool) -> bytes:
    image = Image.fromarray(array)
    image.thumbnail((THUMB, THUMB), Image.NEAREST if nearest else Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def add_routes(app: FastAPI, server) -> None:
    def doctor_report(name: str) -> tuple[dict | None, dict | None]:
        meta = server.datasets.meta(name)
        job_id = meta.get("doctor_job")
        try:
            job = server.jobs.get(job_id) if job_id else None
        except EdgesegError:
            return None, None
        if job is None:
            return None, None
        path = server.jobs.dir(job_id) / DOCTOR_JSON
        report = json.loads(path.read_text(encoding="utf-8")) if job["state"] == "done" and path.is_file() else None
        return job, report

    def start_doctor(name: str) -> None:
        job = server.jobs.create("doctor", f"label doctor: {name}", {}, spec=server.datasets.spec(name), dataset=name)
        server.datasets.set_meta(name, doctor_job=job["id"])

    @app.get("/datasets/new", response_class=HTMLResponse)
    def new_dataset():
        return server.page("dataset_new.html", form=FolderForm("", "", "").__dict__, spec_form={"name": "", "spec": ""},
                           error="", mode="folders")

    @app.post("/datasets/new", response_class=HTMLResponse)
    async def create_dataset(request: Request):
        fields = {k: str(v) for k, v in (await request.form()).items()}
        mode = fields.pop("mode", "folders")
        form = FolderForm(**{k: fields.get(k, v) for k, v in FolderForm("", "", "").__dict__.items()})
        spec_form = {"name": fields.get("spec_name", ""), "spec": fields.get("spec", "")}
        try:
            if mode == "spec":
                name = server.datasets.create_from_spec(spec_form["name"], spec_form["spec"])
            else:
                name = server.datasets.create_from_folders(form)
        except EdgesegError as err:
            return server.page("dataset_new.html", status=400, form=form.__dict__, spec_form=spec_form,
                               error=str(err), mode=mode)
        start_doctor(name)
        return RedirectResponse(f"/datasets/{name}", status_code=303)

    @app.get("/datasets/{name}", response_class=HTMLResponse)
    def dataset_page(name: str):
        folder = server.datasets.folder(name)
        job, report = doctor_report(name)
        return server.page("dataset.html", name=name, job=job, report=report,
                           spec=(folder / "dataset.yaml").read_text(encoding="utf-8"))

    @app.post("/datasets/{name}/doctor")
    def rerun_doctor(name: str):
        start_doctor(name)
        return RedirectResponse(f"/datasets/{name}", status_code=303)

    @app.post("/datasets/{name}/delete")
    def delete_dataset(name: str):
        server.datasets.delete(name)
        return RedirectResponse("/", status_code=303)

    @app.get("/datasets/{name}/explore", response_class=HTMLResponse)
    def explore(name: str, split: str = "", page: int = 0):
        source = server.datasets.source(name)
        splits = source.split_names()
        split = split if split in splits else (splits[0] if splits else "")
        samples = []
        total = 0
        if split:
            dataset = source.dataset(split, check_files=False)
            total = len(dataset)
            pages = max(1, -(-total // PAGE_SIZE))
            page = max(0, min(page, pages - 1))
            samples = [(i, dataset.sample_name(i)) for i in range(page * PAGE_SIZE, min(total, (page + 1) * PAGE_SIZE))]
        classes = source.classes
        legend = [(n, "#%02x%02x%02x" % tuple(c)) for n, c in zip(classes.names, classes.palette)]
        return server.page("explore.html", name=name, split=split, splits=splits, samples=samples, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), total=total, legend=legend)

    @app.get("/datasets/{name}/thumb/{split}/{index}/{kind}.png")
    def thumb(name: str, split: str, index: int, kind: str):
        source = server.datasets.source(name)
        if split not in source.split_names() or kind not in ("image", "label"):
            return Response(status_code=404)
        dataset = source.dataset(split, check_files=False)
        if not 0 <= index < len(dataset):
            return Response(status_code=404)
        try:
            image, label = dataset.read(index)
        except EdgesegError as err:
            return Response(str(err), status_code=422, media_type="text/plain")
        data = thumbnail_png(image, False) if kind == "image" else thumbnail_png(colourise(label, source.classes), True)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

