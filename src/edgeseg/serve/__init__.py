"""``edgeseg serve``: DIGITS' web workflow (datasets, training jobs with live curves,
explore, test one / test many, downloads) over the same engine as the command line.

FastAPI + uvicorn with server-rendered Jinja2 pages and one small script: every asset ships
in the package, so the pages work with no internet."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from edgeseg.errors import ConfigError

LOCAL_HOSTS = ("localhost",)


def is_local(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1, localhost)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(host: str, port: int, workdir: Path, data_roots: list[Path], token: str | None, warn) -> None:
    """Serve until interrupted; ``warn`` receives the line about a non-local bind."""
    try:
        import uvicorn

        from edgeseg.serve.app import create_app
    except ImportError as err:
        raise ConfigError(f"edgeseg serve needs the web extras ({err.name} is missing): "
                          f"pip install 'edgeseg[serve]'") from None
    for root in data_roots:
        if not root.is_dir():
            raise ConfigError(f"--data-root {root}: folder not found")
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise ConfigError(f"--workdir {workdir}: is a file, not a folder")
    _check_port_free(host, port)
    if not is_local(host):
        warn(f"warning: serving on {host}, reachable from other machines"
             + ("" if token else "; anyone who can reach it can start jobs and read your data (set --token)"))
    app = create_app(workdir, data_roots, token)
    warn(f"edgeseg serve: http://{host if ':' not in host else f'[{host}]'}:{port}/"
         + ("?token=..." if token else "") + f"  (workdir {Path(workdir).resolve()})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_port_free(host: str, port: int) -> None:
    """A one-line error now, rather than uvicorn's log lines after the banner, when the address
    is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
