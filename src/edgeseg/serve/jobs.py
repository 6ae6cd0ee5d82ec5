"""Jobs: the existing commands (``python -m edgeseg train/run/data check/export``) run in
their own processes, one at a time by default, from a queue whose state lives on disk
(``WORKDIR/jobs/ID/job.json``), so jobs and their history survive a restart of the server
and a job the server died under is resumed from its last checkpoint."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import edgeseg
from edgeseg.errors import ConfigError
from edgeseg.fileio import atomic_write_json
from edgeseg.layout import LAST_DIR, TRAIN_STATE

JOB_FILE = "job.json"
LOG_FILE = "log.txt"
RUN_DIR = "run"            # a train job's run directory
PIPELINE_DIR = "pipeline"  # a recipe job's pipeline directory
DOCTOR_JSON = "doctor.json"
KINDS = ("train", "recipe", "doctor", "export", "eval")
EVAL_JSON = "eval.json"
FINISHED = ("done", "failed", "aborted")


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:  # Linux: the job dies with the server (and is resumed when the server comes back)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class JobStore:
    """The jobs under ``root`` and the runner that works through the queue."""

    def __init__(self, root: Path, max_running: int = 1) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_running = max_running
        self.lock = threading.RLock()
        self.processes: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.recover()

    # ---- records on disk
    def dir(self, job_id: str) -> Path:
        path = (self.root / job_id).resolve()
        if path.parent != self.root.resolve() or not (path / JOB_FILE).is_file():
            raise ConfigError(f"job '{job_id}' not found")
        return path

    def get(self, job_id: str) -> dict:
        return json.loads((self.dir(job_id) / JOB_FILE).read_text(encoding="utf-8"))

    def save(self, job: dict) -> None:
        atomic_write_json(self.root / job["id"] / JOB_FILE, job)

    def update(self, job_id: str, **changes) -> dict:
        with self.lock:
            job = self.get(job_id)
            job.update(changes)
            self.save(job)
            return job

    def all(self) -> list[dict]:
        jobs = []
        for path in self.root.glob(f"*/{JOB_FILE}"):
            try:
                jobs.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(jobs, key=lambda j: j["created"], reverse=True)

    def create(self, kind: str, title: str, files: dict[str, str], **fields) -> dict:
        """A queued job whose folder holds ``files`` (name -> text), e.g. its config.yaml."""
        if kind not in KINDS:
            raise ConfigError(f"unknown job kind '{kind}'")
        job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{kind}-{uuid.uuid4().hex[:4]}"
        folder = self.root / job_id
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        job = {"id": job_id, "kind": kind, "title": title, "state": "queued", "created": time.time(),
               "started": None, "finished": None, "pid": None, "returncode": None, "resume": False,
               "message": "", "history": [], **fields}
        self.save(job)
        return job

    # ---- what a job runs
    def command(self, job: dict) -> list[str]:
        folder = self.root / job["id"]
        base = [sys.executable, "-m", "edgeseg"]
        if job["kind"] == "train":
            run = folder / RUN_DIR
            if job["resume"] and (run / LAST_DIR / TRAIN_STATE).is_file():
                return base + ["train", "--resume", str(run)]
            if run.exists():  # stopped before its first checkpoint: start again
                shutil.rmtree(run)
            return base + ["train", str(folder / "config.yaml"), f"runs_dir={folder}", f"name={RUN_DIR}"]
        if job["kind"] == "recipe":
            return base + ["run", str(folder / "recipe.yaml"), "--out", str(folder / PIPELINE_DIR)]
        if job["kind"] == "doctor":
            return base + ["data", "check", job["spec"], "--json", str(folder / DOCTOR_JSON), "--force"]
        if job["kind"] == "eval":
            return base + ["eval", job["model"], "--data", job["spec"], "--json", str(folder / EVAL_JSON), "--force"]
        return base + ["export", job["model"], "--out", str(folder / job["output"]), "--force",
                       f"format={job['format']}", *job.get("settings", [])]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        package_parent = str(Path(edgeseg.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        return env

    # ---- actions
    def abort(self, job_id: str) -> dict:
        """Stop a queued or running job; a training keeps its last checkpoint (last/)."""
        with self.lock:
            job = self.get(job_id)
            if job["state"] == "queued":
                return self.update(job_id, state="aborted", finished=time.time(), message="aborted before it started")
            if job["state"] != "running":
                raise ConfigError(f"job {job_id} is {job['state']}, not running")
            job = self.update(job_id, abort_requested=True)
            process = self.processes.get(job_id)
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return job

    def resume(self, job_id: str) -> dict:
        with self.lock:
            job = self.get(job_id)
            if job["state"] not in ("aborted", "failed"):
                raise ConfigError(f"job {job_id} is {job['state']}; only aborted or failed jobs resume")
            return self.update(job_id, state="queued", resume=True, abort_requested=False, message="queued to resume",
                               finished=None, queued_again=time.time())

    def delete(self, job_id: str) -> None:
        with self.lock:
            job = self.get(job_id)
            if job["state"] == "running":
                raise ConfigError(f"job {job_id} is running: abort it first")
            shutil.rmtree(self.dir(job_id))

    # ---- the runner
    def recover(self) -> None:
        """Jobs left 'running' by a server that died: stop any orphan process, queue a resume."""
        for job in self.all():
            if job["state"] != "running":
                continue
            pid = job.get("pid")
            if _alive(pid) and job["id"] in _cmdline(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                for _ in range(100):
                    if not _alive(pid):
                        break
                    time.sleep(0.1)
            self.update(job["id"], state="queued", resume=True, pid=None, queued_again=time.time(),
                        message="the server stopped during this job; it resumes from its last checkpoint")

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="edgeseg-jobs", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for process in list(self.processes.values()):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _next(self) -> dict | None:
        queued = [j for j in self.all() if j["state"] == "queued"]
        return min(queued, key=lambda j: j.get("queued_again") or j["created"]) if queued else None

    def _loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                job = self._next() if len(self.processes) < self.max_running else None
                if job is not None:
                    self._launch(job)
            for job_id, process in list(self.processes.items()):
                if process.poll() is not None:
                    self._finish(job_id, process.returncode)
            self.stopping.wait(0.5)

    def _launch(self, job: dict) -> None:
        folder = self.root / job["id"]
        try:
            command = self.command(job)
        except OSError as err:
            self.update(job["id"], state="failed", message=f"cannot start: {err}", finished=time.time())
            return
        with open(folder / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(command[1:])}\n")
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=folder, env=self.environment(), start_new_session=True,
                                       preexec_fn=_child_setup)
        self.processes[job["id"]] = process
        history = job.get("history", []) + [{"started": time.time(), "command": command[1:]}]
        self.update(job["id"], state="running", pid=process.pid, started=job.get("started") or time.time(),
                    history=history, message="")

    def _finish(self, job_id: str, returncode: int) -> None:
        with self.lock:
            self.processes.pop(job_id, None)
            job = self.get(job_id)
            if job.get("abort_requested") and returncode != 0:
                state, message = "aborted", "aborted; the last checkpoint is kept (resume continues from it)"
            elif returncode == 0 or (job["kind"] == "doctor" and returncode == 1):
                state, message = "done", "problems found" if returncode == 1 else ""
            else:
                state, message = "failed", _last_error(self.root / job_id / LOG_FILE) or f"exit status {returncode}"
            self.update(job_id, state=state, returncode=returncode, finished=time.time(), pid=None, message=message,
                        abort_requested=False)
            if state == "done" and job["kind"] == "train":
                self._queue_evaluation(job)

    def _queue_evaluation(self, job: dict) -> None:
        """The per-class IoU of a finished training's best model: ``edgeseg eval`` as a job."""
        import yaml

        folder = self.root / job["id"]
        try:
            spec = (yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {})["data"]["spec"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return
        if isinstance(spec, str) and (folder / RUN_DIR / "best").is_dir():
            self.create("eval", f"evaluate {job['title']}", {}, parent=job["id"], model=str(folder / RUN_DIR / "best"),
                        spec=spec)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _last_error(log: Path) -> str:
    """The 'error: ...' line a command printed, or its last line."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:500]


def tail(path: Path, lines: int = 200) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
