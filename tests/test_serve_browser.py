"""The seed's tutorial in a real browser: Playwright driving headless Chromium from Debian's
``chromium`` package (no browser download) against ``edgeseg serve`` started as a user would.
Create a dataset from folders, explore it, create a model, watch the curve grow, abort and
resume, test one image and many, export and download the bundle and run it; a broken dataset
shows the doctor's problems. Screenshots are saved in the test's tmp folder (screens/)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_folders

CHROMIUM = Path(os.environ.get("EDGESEG_CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("fastapi", reason="the serve extra is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, data_root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    log = open(workdir.parent / f"server-{port}.log", "w")  # a file: a full pipe would stall the server
    process = subprocess.Popen([sys.executable, "-m", "edgeseg", "serve", "--port", str(port), "--workdir",
                                str(workdir), "--data-root", str(data_root)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"edgeseg serve exited: {(workdir.parent / f'server-{port}.log').read_text()}")
            time.sleep(0.2)
    process.kill()
    raise AssertionError("edgeseg serve did not start listening in 60 s")


@pytest.fixture()
def browser_page(tmp_path):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1300, "height": 900}, accept_downloads=True)
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def epochs_shown(page) -> int:
    return page.locator("#epochs tbody tr").count()


def test_tutorial_end_to_end(tmp_path, browser_page):
    page, screens = browser_page, tmp_path / "screens"
    screens.mkdir()
    data = write_tiny_folders(tmp_path / "data" / "tiny", count=10)
    broken = write_tiny_folders(tmp_path / "data" / "broken", count=4)
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(broken / "labels" / "im01.png")  # class 9 of 3
    port = free_port()
    server = start_server(tmp_path / "work", tmp_path / "data", port)
    base = f"http://127.0.0.1:{port}"
    try:
        # a dataset from folders; the doctor's report
        page.goto(base + "/datasets/new")
        page.fill("#folders-form input[name=name]", "tiny")
        page.fill("input[name=image_folder]", str(data / "images"))
        page.fill("input[name=label_folder]", str(data / "labels"))
        page.fill("input[name=val_percent]", "20")
        page.fill("input[name=classes_file]", str(data / "classes.txt"))
        page.screenshot(path=screens / "01-new-dataset.png", full_page=True)
        page.click("#create-dataset")
        page.wait_for_selector("#doctor-summary")
        assert "clean: no problems found" in page.inner_text("#doctor-summary")
        page.screenshot(path=screens / "02-doctor-report.png", full_page=True)
        # explore
        page.click("#explore-link")
        page.wait_for_selector("#thumbs figure")
        assert page.locator("#thumbs figure").count() == 8
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=screens / "03-explore.png", full_page=True)
        # a model: validation errors beside the fields first
        page.goto(base + "/models/new?dataset=tiny")
        page.wait_for_function("document.getElementById('arch-profile').textContent.includes('params')")
        page.fill("input[name=epochs]", "0")
        page.click("#create-model")
        assert "greater than or equal to 1" in page.inner_text("#error-epochs")
        page.screenshot(path=screens / "04-model-form-error.png", full_page=True)
        epochs = 250  # the page polls each second: a fast machine trains ~60 tiny epochs before the abort lands
        for field, value in (("name", "tiny"), ("epochs", str(epochs)), ("lr", "0.01"), ("batch_size", "2"),
                             ("crop", "32 32"), ("num_workers", "0")):
            page.fill(f"input[name={field}]", value)
        page.click("#create-model")
        page.wait_for_selector("#job-state")
        job_url = page.url
        # the curve grows without a reload
        page.wait_for_function("document.querySelectorAll('#epochs tbody tr').length >= 2")
        first = epochs_shown(page)
        page.wait_for_function(f"document.querySelectorAll('#epochs tbody tr').length > {first}")
        # abort at once (a screenshot first let a fast machine finish the run), then resume
        with page.expect_navigation():
            page.click("#abort")
        page.wait_for_function("document.getElementById('job-state').textContent === 'aborted' && "
                               "document.querySelectorAll('#epochs tbody tr').length >= 2")
        stopped = epochs_shown(page)
        assert 2 <= stopped < epochs
        page.screenshot(path=screens / "06-job-aborted.png", full_page=True)
        with page.expect_navigation():
            page.click("#resume")
        page.wait_for_function("document.getElementById('job-state').textContent === 'done' && "
                               f"document.querySelectorAll('#epochs tbody tr').length == {epochs}", timeout=240_000)
        job_id = job_url.rstrip("/").rsplit("/", 1)[-1]
        whole_log = page.request.get(f"{base}/api/jobs/{job_id}?lines=1000").json()["log"]  # the page shows a tail
        assert f"after epoch {stopped}" in whole_log
        page.screenshot(path=screens / "07-job-done.png", full_page=True)
        # test one uploaded image, then many from the dataset, then several uploads
        page.click("text=test it")
        page.set_input_files("input[name=image]", str(data / "images" / "im04.png"))
        page.check("input[name=source][value=upload]")
        page.click("#run-test")
        page.wait_for_selector("#results")
        assert page.locator("#results tr").count() == 2
        page.screenshot(path=screens / "08-test-one.png", full_page=True)
        page.check("input[name=source][value=dataset_many]")
        page.fill("input[name=split]", "train")
        page.click("#run-test")
        page.wait_for_selector("#results td.miou")
        mious = [float(t) for t in page.locator("#results td.miou").all_inner_texts()]
        assert len(mious) == 8 and min(mious) > 0.3
        page.screenshot(path=screens / "09-test-many.png", full_page=True)
        page.set_input_files("input[name=image]", [str(data / "images" / f"im0{i}.png") for i in (5, 6, 7)])
        page.check("input[name=source][value=upload]")
        with page.expect_navigation():
            page.click("#run-test")
        assert page.locator("#results tr").count() == 4  # the header and the three uploads
        page.screenshot(path=screens / "09b-test-many-uploads.png", full_page=True)
        # export the bundle, download it and run it
        page.goto(job_url)
        page.click("#export-bundle")
        page.wait_for_selector("#download-export", timeout=240_000)
        with page.expect_download() as download:
            page.click("#download-export")
        bundle_zip = tmp_path / "bundle.zip"
        download.value.save_as(bundle_zip)
        zipfile.ZipFile(bundle_zip).extractall(tmp_path / "unzipped")
        run = subprocess.run([sys.executable, str(tmp_path / "unzipped" / "bundle" / "run.py"), "-i",
                              str(data / "images" / "im05.png"), "-o", str(tmp_path / "bundle-out")],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert (tmp_path / "bundle-out" / "im05.png").is_file()
        page.screenshot(path=screens / "10-export-done.png", full_page=True)
        # a broken dataset: the doctor's problems on the page
        page.goto(base + "/datasets/new")
        page.fill("#folders-form input[name=name]", "broken")
        page.fill("input[name=image_folder]", str(broken / "images"))
        page.fill("input[name=label_folder]", str(broken / "labels"))
        page.fill("input[name=classes_file]", str(broken / "classes.txt"))
        page.click("#create-dataset")
        page.wait_for_selector("#doctor-summary")
        assert page.inner_text("#doctor-summary") == "problems found"
        assert "im01.png" in " ".join(page.locator(".problems").all_inner_texts())
        page.screenshot(path=screens / "11-broken-dataset.png", full_page=True)
        # a path outside the roots: a clear message, no stack trace
        page.goto(base + "/datasets/new")
        page.fill("#folders-form input[name=name]", "outside")
        page.fill("input[name=image_folder]", "/etc")
        page.fill("input[name=label_folder]", "/etc")
        page.click("#create-dataset")
        assert "outside the workdir" in page.inner_text("#form-error")
        assert "Traceback" not in page.content()
    finally:
        server.terminate()
        server.wait(timeout=30)
