"""Every path the server touches from user input stays under the workdir or a data root."""

from __future__ import annotations

import re
from pathlib import Path

from edgeseg.errors import ConfigError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def safe_name(text: str, what: str) -> str:
    """``text`` if it is a plain name (letters, digits, '.', '_', '-'; no '/', no '..')."""
    text = (text or "").strip()
    if not SAFE_NAME.match(text) or ".." in text:
        raise ConfigError(f"{what}: '{text}' is not a plain name (letters, digits, '.', '_' and '-', "
                          f"at most 64, not starting with a dot)")
    return text


class PathGuard:
    """Resolves user-given paths and refuses any outside the allowed roots (symlinks are
    followed before the check, so a link cannot lead out)."""

    def __init__(self, workdir: Path, data_roots: list[Path]) -> None:
        self.workdir = Path(workdir).resolve()
        self.roots = [self.workdir, *(Path(r).resolve() for r in data_roots)]

    def resolve(self, text: str | Path, what: str = "path", must_exist: bool = True) -> Path:
        """The resolved path (relative paths are taken from the workdir); ConfigError when
        it lies outside every root or (with ``must_exist``) does not exist."""
        raw = str(text).strip()
        if not raw or "\0" in raw:
            raise ConfigError(f"{what}: no path given")
        path = Path(raw).expanduser()
        resolved = (path if path.is_absolute() else self.workdir / path).resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            raise ConfigError(f"{what}: '{raw}' lies outside the workdir and the data roots "
                              f"({', '.join(map(str, self.roots))})")
        if must_exist and not resolved.exists():
            raise ConfigError(f"{what}: '{raw}' not found")
        return resolved

    def inside(self, base: Path, relative: str, what: str = "file") -> Path:
        """``base/relative`` resolved, refused when it leaves ``base``."""
        base = base.resolve()
        resolved = (base / relative).resolve()
        if not resolved.is_relative_to(base):
            raise ConfigError(f"{what}: '{relative}' leaves its folder")
        if not resolved.exists():
            raise ConfigError(f"{what}: '{relative}' not found")
        return resolved
