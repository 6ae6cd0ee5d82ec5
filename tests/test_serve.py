"""edgeseg serve through its HTTP interface (FastAPI's TestClient, the real routes, jobs run
as real ``python -m edgeseg`` processes): path safety, the forms' validation, the job queue
(abort keeps the checkpoint, resume finishes, a server that died resumes its job), the doctor
report, explore, test one / many and the downloads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import write_tiny_folders

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from edgeseg.errors import ConfigError  # noqa: E402
from edgeseg.training.checkpoint import saved_progress  # noqa: E402
from edgeseg.serve.app import create_app  # noqa: E402
from edgeseg.serve.jobs import JobStore  # noqa: E402
from edgeseg.serve.paths import PathGuard  # noqa: E402

MODEL_FORM = {"architecture": "basic_encdec", "name": "tiny", "epochs": "2", "lr": "0.01", "batch_size": "2",
              "crop": "32 32", "optimizer": "adam", "schedule": "poly", "class_weights": "none", "num_workers": "0",
              "yaml": ""}


def wait_for(client, job_id: str, states=("done", "failed", "aborted"), timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()["job"]
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server over a workdir with the tiny dataset 'tiny' and one finished 2-epoch training."""
    root = tmp_path_factory.mktemp("serve")
    data = write_tiny_folders(root / "data")
    with TestClient(create_app(root / "work", [root / "data"])) as client:
        response = client.post("/datasets/new", follow_redirects=False, data={
            "mode": "folders", "name": "tiny", "image_folder": str(data / "images"),
            "label_folder": str(data / "labels"), "val_mode": "percent", "val_percent": "20",
            "classes_file": str(data / "classes.txt"), "colormap": "label_image"})
        assert response.status_code == 303, response.text
        response = client.post("/models/new", data={**MODEL_FORM, "dataset": "tiny"}, follow_redirects=False)
        assert response.status_code == 303, response.text
        job_id = response.headers["location"].rsplit("/", 1)[1]
        assert wait_for(client, job_id)["state"] == "done", client.get(f"/api/jobs/{job_id}").json()["log"]
        yield client, root, job_id


def test_path_guard_refuses_what_leaves_the_roots(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "secret")
    guard = PathGuard(tmp_path / "work", [tmp_path / "data"])
    assert guard.resolve(str(tmp_path / "data")) == (tmp_path / "data").resolve()
    assert guard.resolve("../data") == (tmp_path / "data").resolve()  # relative: from the workdir
    for bad in ("../secret", str(tmp_path / "secret"), str(tmp_path / "data" / "link"), "/etc",
                str(tmp_path / "data" / ".." / "secret")):
        with pytest.raises(ConfigError, match="outside the workdir"):
            guard.resolve(bad)


def test_traversal_through_the_routes_is_refused(served):
    client, root, job_id = served
    outside = client.post("/datasets/new", data={"mode": "folders", "name": "x", "image_folder": "/etc",
                                                  "label_folder": str(root / "data" / "labels")})
    assert outside.status_code == 400 and "lies outside the workdir and the data roots" in outside.text
    assert "Traceback" not in outside.text
    spec = client.post("/datasets/new", data={"mode": "spec", "spec_name": "y", "spec": "folder:../../../etc"})
    assert spec.status_code == 400 and "outside the workdir" in spec.text
    assert client.post("/datasets/new", data={"mode": "spec", "spec_name": "../evil", "spec": "synthetic:4"}
                       ).status_code == 400
    assert not (root / "evil").exists()
    assert client.get("/jobs/..%2F..%2Fdata").status_code in (400, 404)
    assert client.get("/api/jobs/../../etc").status_code in (400, 404)
    assert client.get(f"/jobs/{job_id}/download/..%2F..%2Fetc.zip").status_code in (400, 404)
    assert client.get("/datasets/tiny/thumb/..%2F..%2Fetc/0/image.png").status_code in (400, 404)
    pasted = client.post("/models/new", data={**MODEL_FORM, "dataset": "",
                                              "yaml": "data: {spec: 'folder:/etc'}\nmodel: {pretrained: /etc/passwd}"})
    assert pasted.status_code == 400 and "outside the workdir" in pasted.text


def test_doctor_report_and_explore(served):
    client, _, _ = served
    page = client.get("/datasets/tiny").text
    assert "clean: no problems found" in page
    assert "held out 2 of 10 train images" in page
    for name in ("background", "bar", "floor"):
        assert f"<td>{name}</td>" in page
    explore = client.get("/datasets/tiny/explore?split=train").text
    assert explore.count("<figure>") == 8
    thumb = client.get("/datasets/tiny/thumb/train/0/label.png")
    colours = {tuple(c) for c in np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB")).reshape(-1, 3)}
    assert colours <= {(0, 0, 0), (200, 40, 40), (40, 160, 40)} and len(colours) == 3


def test_broken_dataset_shows_the_doctors_problems(served):
    client, root, _ = served
    broken = write_tiny_folders(root / "data" / "broken", count=4)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(broken / "labels" / "im01.png")  # class 7 of 3
    (broken / "labels" / "im02.png").write_bytes(b"not a png")
    response = client.post("/datasets/new", follow_redirects=False, data={
        "mode": "folders", "name": "broken", "image_folder": str(broken / "images"),
        "label_folder": str(broken / "labels"), "val_mode": "percent", "val_percent": "25",
        "classes_file": str(broken / "classes.txt"), "colormap": "label_image"})
    assert response.status_code == 303, response.text
    job_id = client.get("/api/jobs").json()["jobs"][0]["id"]
    assert wait_for(client, job_id)["state"] == "done"
    page = client.get("/datasets/broken").text
    assert 'class="error">problems found' in page
    problems = page[page.index('<ul class="problems">'):]
    assert "im01.png" in problems and "im02.png" in problems


def test_folder_form_writes_channels_and_same_shape(served):
    client, root, _ = served
    data = root / "data"
    form = {"mode": "folders", "name": "gray", "image_folder": str(data / "images"),
            "label_folder": str(data / "labels"), "val_mode": "percent", "val_percent": "20",
            "classes_file": str(data / "classes.txt"), "colormap": "label_image", "channels": "gray",
            "same_shape": "yes"}
    bad = client.post("/datasets/new", data={**form, "channels": "cmyk"})
    assert bad.status_code == 400 and "channel conversion: choose RGB" in bad.text
    assert not (root / "work" / "datasets" / "gray").exists()
    response = client.post("/datasets/new", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    config = yaml.safe_load((root / "work" / "datasets" / "gray" / "dataset.yaml").read_text())
    assert config["channels"] == "gray" and config["same_shape"] is True
    thumb = client.get("/datasets/gray/thumb/train/0/image.png")
    pixels = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    odd = write_tiny_folders(data / "odd", count=4)
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(odd / "images" / "im01.png")
    response = client.post("/datasets/new", follow_redirects=False, data={
        **form, "name": "odd", "image_folder": str(odd / "images"), "label_folder": str(odd / "labels"),
        "channels": "rgb"})
    assert response.status_code == 303, response.text
    doctor = client.get("/api/jobs").json()["jobs"][0]
    assert doctor["kind"] == "doctor" and wait_for(client, doctor["id"])["state"] == "done"
    problems = client.get("/datasets/odd").text.split('<ul class="problems">')[1]
    assert "odd/train/images/im01.png: size 32x40 differs from the dataset&#39;s size 32x32" in problems  # via its link


def test_model_form_errors_stand_beside_their_fields(served):
    client, _, _ = served
    response = client.post("/models/new", data={**MODEL_FORM, "dataset": "tiny", "epochs": "0", "lr": "fast",
                                                 "crop": "32"})
    assert response.status_code == 400
    assert 'id="error-epochs">Input should be greater than or equal to 1' in response.text
    assert 'id="error-lr">' in response.text and 'id="error-crop">' in response.text
    typo = client.post("/models/new", data={**MODEL_FORM, "dataset": "tiny", "yaml": "epoch: 3"})
    assert typo.status_code == 400 and "epoch" in typo.text and 'id="error-yaml"' in typo.text
    assert client.post("/models/new", data={**MODEL_FORM}).status_code == 400  # no dataset, no YAML


def test_abort_keeps_the_checkpoint_and_resume_finishes(served):
    client, root, _ = served
    response = client.post("/models/new", data={**MODEL_FORM, "dataset": "tiny", "name": "long", "epochs": "20"},
                           follow_redirects=False)
    job_id = response.headers["location"].rsplit("/", 1)[1]
    deadline = time.time() + 120
    while not client.get(f"/api/jobs/{job_id}").json()["metrics"] and time.time() < deadline:
        time.sleep(0.2)
    client.post(f"/jobs/{job_id}/abort")
    assert wait_for(client, job_id)["state"] == "aborted"
    run = root / "work" / "jobs" / job_id / "run"
    assert (run / "last" / "state.json").is_file()
    # the kept checkpoint decides where training resumes (metrics.csv may hold one epoch more,
    # written just before the abort landed; resuming drops it)
    stopped_at = saved_progress(run)["epoch"]
    assert 1 <= stopped_at < 20
    client.post(f"/jobs/{job_id}/resume")
    assert wait_for(client, job_id)["state"] == "done"
    status = client.get(f"/api/jobs/{job_id}?lines=1000").json()
    assert [row["epoch"] for row in status["metrics"]] == list(range(1, 21))
    assert f"after epoch {stopped_at}" in status["log"]
    client.post(f"/jobs/{job_id}/delete")
    assert client.get(f"/api/jobs/{job_id}").status_code == 400
    assert not (root / "work" / "jobs" / job_id).exists()


def test_a_job_the_server_died_under_is_resumed(tmp_path):
    store = JobStore(tmp_path / "jobs")
    job = store.create("doctor", "orphan", {}, spec="synthetic:4")
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", job["id"]],
                              start_new_session=True)
    store.update(job["id"], state="running", pid=orphan.pid)
    JobStore(tmp_path / "jobs")  # a new server over the same folder
    assert orphan.wait(timeout=15) != 0  # the orphan was stopped
    recovered = store.get(job["id"])
    assert recovered["state"] == "queued" and recovered["resume"] and "resumes" in recovered["message"]


def test_test_one_and_many(served):
    client, root, job_id = served
    model = f"{job_id}/run/best"
    image = io.BytesIO()
    Image.open(root / "data" / "images" / "im03.png").save(image, "PNG")
    one = client.post("/test", data={"model": model, "source": "upload", "colormap": "dataset", "resize": "none"},
                      files={"image": ("im03.png", image.getvalue(), "image/png")})
    assert one.status_code == 200 and one.text.count("data:image/png;base64,") == 3
    junk = client.post("/test", data={"model": model, "source": "upload"},
                       files={"image": ("x.png", b"<html>not an image", "image/png")})
    assert junk.status_code == 400 and "not an image file" in junk.text
    many = client.post("/test", data={"model": model, "source": "dataset_many", "dataset": "tiny", "split": "val",
                                      "index": "0", "count": "5", "colormap": "none", "resize": "none"})
    assert many.status_code == 200
    assert many.text.count('<td class="miou">') == 2  # the val split holds 2 images
    uploads = [("image", (f"im0{i}.png", (root / "data" / "images" / f"im0{i}.png").read_bytes(), "image/png"))
               for i in (1, 2, 3)]
    several = client.post("/test", data={"model": model, "source": "upload", "colormap": "dataset",
                                         "resize": "none"}, files=uploads)
    assert several.status_code == 200 and several.text.count("data:image/png;base64,") == 3 * 3
    assert all(f"<td>im0{i}.png</td>" in several.text for i in (1, 2, 3))
    listed = f"# two images\n{root / 'data' / 'images' / 'im04.png'}\n\n../data/images/im05.png\n"
    from_list = client.post("/test", data={"model": model, "source": "list", "colormap": "dataset",
                                           "resize": "none"}, files={"list_file": ("l.txt", listed, "text/plain")})
    assert from_list.status_code == 200 and from_list.text.count("data:image/png;base64,") == 2 * 3
    assert "<td>im04.png</td>" in from_list.text and "<td>im05.png</td>" in from_list.text
    (root / "data" / "l.txt").write_text(listed)
    by_path = client.post("/test", data={"model": model, "source": "folder", "folder": str(root / "data" / "l.txt"),
                                         "colormap": "dataset", "resize": "none"})
    assert by_path.status_code == 200 and by_path.text.count("data:image/png;base64,") == 2 * 3
    escape = client.post("/test", data={"model": model, "source": "list"},
                         files={"list_file": ("l.txt", "images/../../../etc/passwd\n", "text/plain")})
    assert escape.status_code == 400 and "list file line 1" in escape.text and "outside the workdir" in escape.text
    assert client.post("/test", data={"model": "../../etc", "source": "upload"}).status_code == 400


def test_per_class_iou_of_a_finished_training(served):
    client, _, job_id = served
    evaluation = next(j for j in client.get("/api/jobs").json()["jobs"] if j.get("parent") == job_id and j["kind"] == "eval")
    assert wait_for(client, evaluation["id"])["state"] == "done"
    page = client.get(f"/jobs/{job_id}").text
    table = page[page.index('id="per-class"'):]
    for name in ("background", "bar", "floor"):
        assert f"<td>{name}</td>" in table
    assert "<th>mIoU</th>" in table


def test_downloads(served):
    client, _, job_id = served
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job_id}/download/model.zip").content))
    assert {"best/config.json", "best/model.safetensors"} <= set(archive.namelist())
    response = client.post(f"/jobs/{job_id}/export", data={"format": "onnx"}, follow_redirects=False)
    export_id = response.headers["location"].rsplit("/", 1)[1]
    assert wait_for(client, export_id)["state"] == "done", client.get(f"/api/jobs/{export_id}").json()["log"]
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{export_id}/download/export.zip").content))
    assert archive.namelist() == ["model.onnx"]
    for page in (f"/jobs/{export_id}", f"/jobs/{job_id}", "/", "/test", "/models/new", "/recipes/new", "/datasets/new"):
        assert client.get(page).status_code == 200, page
    tested = client.post("/test", data={"model": f"{export_id}/model.onnx", "source": "dataset", "dataset": "tiny",
                                        "split": "val", "index": "1", "colormap": "dataset", "resize": "none"})
    assert tested.status_code == 200 and tested.text.count('<td class="miou">') == 1


def test_token_is_required_when_set(tmp_path):
    with TestClient(create_app(tmp_path / "work", [], token="s3cret", start_jobs=False)) as client:
        assert client.get("/").status_code == 401
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/?token=s3cret").status_code == 200
        assert client.get("/").status_code == 200  # the cookie from the first visit
    with TestClient(create_app(tmp_path / "work2", [], start_jobs=False)) as client:
        refused = client.post("/datasets/new", data={"mode": "spec"}, headers={"origin": "http://evil.example"})
        assert refused.status_code == 403


def test_recipe_job_shows_its_report_and_curves(served):
    client, root, _ = served
    spec = str(root / "work" / "datasets" / "tiny" / "dataset.yaml")
    recipe = (f"name: small\ntrain:\n  data: {{spec: '{spec}', num_workers: 0}}\n  model: {{name: basic_encdec}}\n"
              "  augment: {crop: [32, 32]}\n  batch_size: 2\n  epochs: 2\n  optimizer: {lr: 0.01}\n"
              "stages:\n  dense: {stage: train}\n  fold: {stage: fold-bn}\n")
    bad = client.post("/recipes/new", data={"recipe": recipe.replace("fold-bn", "fold-bm")})
    assert bad.status_code == 400 and 'id="error-recipe"' in bad.text and "fold-bm" in bad.text
    response = client.post("/recipes/new", data={"recipe": recipe}, follow_redirects=False)
    assert response.status_code == 303, response.text
    job_id = response.headers["location"].rsplit("/", 1)[1]
    assert wait_for(client, job_id, timeout=300)["state"] == "done", client.get(f"/api/jobs/{job_id}").json()["log"]
    assert [row["epoch"] for row in client.get(f"/api/jobs/{job_id}").json()["metrics"]] == [1, 2]
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="report"' in page and "fold" in page
    assert f"{job_id}/pipeline/stages/02-fold/model" in client.get("/test").text


def test_serve_command_checks_its_options():
    from conftest import run_cli_here

    from edgeseg.serve import is_local

    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and is_local("127.1.2.3")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.5")
    result = run_cli_here("serve", "--data-root", "/no/such/folder")
    assert result.returncode == 2 and "--data-root /no/such/folder: folder not found" in result.stderr


def test_a_taken_port_or_a_file_as_workdir_is_one_line_before_serving(tmp_path):
    import socket

    from edgeseg.serve import run_server

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="--workdir .*afile: is a file, not a folder"):
        run_server("127.0.0.1", 8000, tmp_path / "afile", [], None, lambda line: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port {port}: cannot listen there"):
            run_server("127.0.0.1", port, tmp_path / "w", [], None, lambda line: None)
    assert not (tmp_path / "w").exists()
