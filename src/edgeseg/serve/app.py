"""The web application: FastAPI routes rendering Jinja2 pages (every asset in the package),
a JSON API the job page polls, and the guards (access token, same-origin posts, paths)."""

from __future__ import annotations

import csv
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.layout import METRICS_CSV, REPORT_MD
from edgeseg.serve.datasets import DatasetStore
from edgeseg.serve.jobs import EVAL_JSON, LOG_FILE, PIPELINE_DIR, RUN_DIR, JobStore, tail
from edgeseg.serve.paths import PathGuard

HERE = Path(__file__).parent
TOKEN_COOKIE = "edgeseg_token"
log = logging.getLogger("edgeseg.serve")


@dataclass
class Server:
    """What every route needs: the roots, the stores and the page renderer."""

    workdir: Path
    guard: PathGuard
    jobs: JobStore
    datasets: DatasetStore
    templates: jinja2.Environment
    token: str | None = None

    def page(self, template: str, status: int = 200, **context) -> HTMLResponse:
        html = self.templates.get_template(template).render(version=__version__, **context)
        return HTMLResponse(html, status_code=status)

    def check_spec(self, spec: str) -> str:
        return self.datasets.resolve_spec(spec)[0]


def create_app(workdir: Path, data_roots: list[Path] = (), token: str | None = None, start_jobs: bool = True,
               max_running: int = 1) -> FastAPI:
    """The application over ``workdir`` (datasets/, jobs/); user paths must lie under it or a data root."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    guard = PathGuard(workdir, list(data_roots))
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                   undefined=jinja2.StrictUndefined)
    templates.filters["tojson_safe"] = lambda value: json.dumps(value).replace("</", "<\\/")
    server = Server(workdir, guard, JobStore(workdir / "jobs", max_running), DatasetStore(workdir / "datasets", guard),
                    templates, token)
    app = FastAPI(title="edgeseg", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def guard_requests(request: Request, call_next):
        if server.token:
            given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or \
                request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), server.token.encode()):
                return PlainTextResponse("edgeseg serve: an access token is needed (open the link with ?token=...)",
                                         status_code=401)
        if request.method == "POST":
            origin = request.headers.get("origin") or request.headers.get("referer")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return PlainTextResponse("cross-site request refused", status_code=403)
        try:
            response = await call_next(request)
        except Exception:  # never a stack trace on the page; the server log has it
            log.exception("internal error on %s", request.url.path)
            return server.page("message.html", status=500, title="Internal error",
                               message="Something went wrong inside the server; the server log has the details. "
                                       "Nothing was changed.")
        if server.token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, server.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(EdgesegError)
    async def edgeseg_error(request: Request, err: EdgesegError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(err)}, status_code=400)
        return server.page("message.html", status=400, title="Cannot do that", message=str(err))

    @app.get("/", response_class=HTMLResponse)
    def home():
        return server.page("home.html", jobs=server.jobs.all(), datasets=server.datasets.names())

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str):
        job = server.jobs.get(job_id)
        folder = server.jobs.dir(job_id)
        report = (folder / PIPELINE_DIR / REPORT_MD)
        children = [j for j in server.jobs.all() if j.get("parent") == job_id]
        return server.page("job.html", job=job, report=report.read_text(encoding="utf-8") if report.is_file() else "",
                           exports=[j for j in children if j["kind"] == "export"],
                           evaluation=latest_evaluation(server.jobs.root, [j for j in children if j["kind"] == "eval"]))

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str, lines: int = 60):
        job = server.jobs.get(job_id)
        folder = server.jobs.dir(job_id)
        return {"job": job, "metrics": read_metrics(metrics_file(folder, job)),
                "log": tail(folder / LOG_FILE, max(1, min(lines, 1000)))}

    @app.get("/api/jobs")
    def job_list():
        return {"jobs": server.jobs.all()}

    @app.post("/jobs/{job_id}/abort")
    def abort(job_id: str):
        server.jobs.abort(job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/jobs/{job_id}/resume")
    def resume(job_id: str):
        server.jobs.resume(job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/jobs/{job_id}/delete")
    def delete(job_id: str):
        server.jobs.delete(job_id)
        return RedirectResponse("/", status_code=303)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    from edgeseg.serve import pages_data, pages_models, pages_test

    for module in (pages_data, pages_models, pages_test):
        module.add_routes(app, server)
    if start_jobs:
        app.router.on_startup.append(server.jobs.start)
        app.router.on_shutdown.append(server.jobs.stop)
    return app


def latest_evaluation(root: Path, jobs: list[dict]) -> dict | None:
    """The newest finished evaluation among ``jobs``: its eval.json (per-class IoU and more)."""
    for job in jobs:  # newest first
        path = root / job["id"] / EVAL_JSON
        if job["state"] == "done" and path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def metrics_file(folder: Path, job: dict) -> Path | None:
    """The metrics.csv a job's curves come from: its run, or a recipe's latest training stage."""
    if job["kind"] == "train":
        return folder / RUN_DIR / METRICS_CSV
    if job["kind"] == "recipe":
        found = sorted((folder / PIPELINE_DIR).rglob(METRICS_CSV), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None
    return None


def read_metrics(path: Path | None) -> list[dict]:
    if path is None or not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return []
    return [{key: _float(value) for key, value in row.items()} for row in rows]


def _float(value: str | None):
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
