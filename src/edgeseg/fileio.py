"""Atomic writes: a reader (or a crash) sees either the old file or the new one, never half;
and the output guard: no command replaces what it did not make."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from edgeseg.errors import OutputError
from edgeseg.layout import OUTPUT_MARK


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _honour_umask(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; the final output gets what open()/mkdir() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_current_umask())


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and then rename ``tmp_path`` onto ``path``.

    The temporary file lives in the destination folder so the rename is atomic; it is
    removed if ``write`` raises, and ``path`` is left untouched in that case.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _honour_umask(tmp, directory=False)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: str | Path, rows: Iterable[dict], fields: list[str]) -> Path:
    """A CSV with a header of ``fields`` and one line per row, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def read_csv_rows(path: str | Path) -> list[dict]:
    """The rows of a CSV with a header (text values); none when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def atomic_replace_dir(build: Callable[[Path], None], final: str | Path) -> Path:
    """Build a directory with ``build(tmp_dir)`` and swap it in for ``final``.

    An existing ``final`` is kept until the new one is complete; if ``build`` raises,
    ``final`` is unchanged. A crash between the two renames leaves the old directory
    under ``final`` + ``.old`` rather than losing it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    _honour_umask(tmp, directory=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def check_output(out: str | Path, command: str, inputs: Iterable[str | Path] = (), force: bool = False,
                 kind: str = "any", flag: str = "--out") -> Path:
    """Refuse, with one line naming the path, an output that would destroy what ``command``
    did not make. ``out`` may never be, contain or sit inside an input, nor be the current
    folder or one above it (not even with ``force``). An existing ``out`` is replaced only if
    it is empty, was written by this command before (its mark, see ``mark_output``, or for a
    file the ``is_own`` test of its kind) or ``force`` is given. ``kind``: 'dir', 'file' or
    'any', what ``out`` must be if it exists; ``flag`` names the option in the messages.
    Returns ``out``."""
    out = Path(out)
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{out}: is the current folder or one above it; give {flag} a new name")
    for source in inputs:
        source_path = Path(source).resolve()
        if resolved == source_path:
            raise OutputError(f"{out}: is also an input of this command; choose another {flag}")
        if source_path in resolved.parents:
            raise OutputError(f"{out}: is inside the input {source}; choose {flag} outside it")
        if resolved in source_path.parents:
            raise OutputError(f"{out}: contains the input {source}; choose another {flag}")
    if not out.exists() and not out.is_symlink():
        return out
    if kind == "dir" and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder; choose another {flag}")
    if kind == "file" and out.is_dir():
        raise OutputError(f"{out}: is a folder; give {flag} a file name")
    if force or written_by(out) == command or (out.is_dir() and not any(out.iterdir())):
        return out
    raise OutputError(f"{out}: exists and was not written by 'edgeseg {command}'; choose another {flag} or pass "
                      f"--force to replace it")


def mark_output(out: str | Path, command: str, files: Iterable[str] = ()) -> None:
    """Record in the folder ``out`` that ``command`` wrote it (and which ``files`` in it)."""
    out = Path(out)
    mark = out / OUTPUT_MARK
    known = read_mark(out).get("files", []) if written_by(out) == command else []
    atomic_write_json(mark, {"command": command, "files": sorted({*known, *files})})


def read_mark(out: Path) -> dict:
    """The mark ``mark_output`` left in folder ``out`` ({} when none or unreadable)."""
    try:
        data = json.loads((Path(out) / OUTPUT_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def written_by(out: Path) -> str | None:
    """The edgeseg command that wrote the folder or JSON file ``out``, if it says so."""
    out = Path(out)
    if out.is_dir():
        return read_mark(out).get("command")
    if out.suffix == ".json":
        try:
            data = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data.get("written_by") if isinstance(data, dict) else None
    if out.suffix == ".png":
        return _png_mark(out)
    if out.suffix == ".onnx":
        import onnx  # heavy, and only needed for this check

        try:
            model = onnx.load(str(out), load_external_data=False)
        except Exception:  # not an ONNX file at all: not ours
            return None
        return "export" if any(entry.key == "edgeseg_config" for entry in model.metadata_props) else None
    return None


def check_files(out_dir: str | Path, names: Iterable[str], command: str, force: bool = False) -> None:
    """Refuse (one line) when a file ``command`` is about to write into ``out_dir`` exists and
    is not one it wrote there before (per the folder's mark), unless ``force``."""
    if force:
        return
    out_dir = Path(out_dir)
    ours = set(read_mark(out_dir).get("files", [])) if written_by(out_dir) == command else set()
    for name in names:
        if (out_dir / name).exists() and name not in ours:
            raise OutputError(f"{out_dir / name}: exists and was not written by 'edgeseg {command}'; choose "
                              f"another --out or pass --force to replace it")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MARK_KEY = b"edgeseg-command"


def mark_png(data: bytes, command: str) -> bytes:
    """``data`` (a PNG) with a text chunk naming the edgeseg command that drew it, placed after
    the header chunk; the image is unchanged."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    body = b"tEXt" + PNG_MARK_KEY + b"\0" + command.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    header_end = len(PNG_SIGNATURE) + 8 + struct.unpack(">I", data[8:12])[0] + 4
    return data[:header_end] + chunk + data[header_end:]


def _png_mark(path: Path) -> str | None:
    try:
        data = path.read_bytes()[:4096]  # the mark sits right after the header
    except OSError:
        return None
    key = b"tEXt" + PNG_MARK_KEY + b"\0"
    start = data.find(key)
    if not data.startswith(PNG_SIGNATURE) or start < 0:
        return None
    length = struct.unpack(">I", data[start - 4:start])[0]
    return data[start + len(key):start + 4 + length].decode(errors="replace")
