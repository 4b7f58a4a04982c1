"""Crash-safe file writes: whole files through a temporary file and a rename, JSON lines
appended and synced one record at a time, and a reader that skips a torn line.

A killed process leaves either the old or the new version of a whole file, and at most one
partial line at the end of an append-only log; :func:`read_lines` skips such a line wherever it
is (and the lines after it still count), and :func:`append_line` starts a new line after it.
Write failures (a read-only folder, a full disk) raise :class:`SparsearchError` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from sparsearch.base.errors import SparsearchError


def _failed(path: Path, e: OSError) -> SparsearchError:
    return SparsearchError(f"cannot write {path}: {e.strerror or e}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_shared(folder: Path) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` and the files in it (some writers, like
    ``save_pretrained``'s safetensors, make them owner-only) the modes ``mkdir`` and ``open``
    would, before it is renamed into place: exports and models are read by other users (a
    server, a cluster)."""
    mask = _umask()
    for path in Path(folder).rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise _failed(path, e) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (an existing file); anything else raises one
    :class:`SparsearchError` line ``"{what} {path}: ..."``."""
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SparsearchError(f"{what} {path}: {e}") from None
    if not isinstance(obj, dict):
        raise SparsearchError(f"{what} {path}: not a JSON object")
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def append_line(path: Path, record: dict) -> None:
    """Append ``record`` as one JSON line and sync it; a torn last line (a kill mid-write) is
    ended first, so that it stays one unreadable line and does not swallow this record. A log
    that is a symbolic link is refused (appending through it would write another file)."""
    path = Path(path)
    line = (json.dumps(record) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SparsearchError(f"{path} is a symbolic link; sparsearch appends only to its own files") from None
        raise _failed(path, e) from None


def read_lines(path: Path, what: str = "JSON-lines file",
               check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """The JSON objects of a JSON-lines file. A torn line (a write cut by a kill: the start of a
    JSON object that does not parse) is skipped wherever it is; any other line that is not a
    JSON object, or a record that ``check`` refuses (it returns what is wrong), raises one line
    ``"{what} {path} line N: ..."``. A file that is a symbolic link is refused."""
    path = Path(path)
    if path.is_symlink():
        raise SparsearchError(f"{what} {path} is a symbolic link; sparsearch reads only its own files")
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if line.isascii() and line.lstrip().startswith(b"{"):
                continue  # torn by a kill
            raise SparsearchError(f"{what} {path} line {n} is not a JSON record (another file in its place?)") from None
        problem = "not a JSON object" if not isinstance(record, dict) else check(record) if check else None
        if problem:
            raise SparsearchError(f"{what} {path} line {n}: {problem}")
        out.append(record)
    return out
