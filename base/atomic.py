"""Crash-safe file writes: whole files through a temporary file and a rename, JSON lines
appended and synced one record at a time, and a reader that skips a torn line.

A killed process leaves either the old or the new version of a whole file, and at most one
partial line at the end of an append-only log; :func:`read_lines` skips such a line wherever it
is (and the lines after it still count), and :func:`append_line` starts a new line after it.
Write failures (a read-only folder, a full disk) raise :class:`SparsearchError` naming the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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
    ended first, so that it stays one unreadable line and does not swallow this record."""
    path = Path(path)
    line = (json.dumps(record) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab+") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _failed(path, e) from None


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, skipping lines that do not parse (torn writes)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
