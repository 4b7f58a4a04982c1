"""Folders that sparsearch owns: run directories and supernets.

- **Containment.** A name read from one of its files (a manifest's variant ``file``) is a path
  inside the folder: relative, without ``..``, and not a symbolic link that leaves the folder
  (:func:`contained`).
- **The marker.** A run directory is made with a marker file (:data:`MARKER`); a command that
  would write into an existing, non-empty folder without it (a home directory given as
  ``--run-dir``) refuses, so that only run directories are ever reset (:func:`claim`).
- **One owner.** Every command that writes a run directory or a supernet holds an exclusive
  ``fcntl.flock`` on its lock file (:data:`LOCK`, which names the holder's PID) until it ends;
  a second writer gets one line naming that PID. The kernel releases the lock when its process
  dies, however it dies, so a lock left by a killed process is simply taken over. The lock file
  is removed when the lock is released.

A folder the command created and that holds nothing but the marker and the lock when the
command ends (it failed before writing anything) is removed again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from sparsearch.base.errors import SparsearchError

MARKER = ".sparsearch-run"
LOCK = ".sparsearch.lock"
OWN_FILES = (MARKER, LOCK)  # not content: a folder holding only these is empty


def contained(root: str | os.PathLike, name: object, what: str) -> Path:
    """``root / name`` for a ``name`` read from a file of ``root`` (``what`` names that file):
    a relative path without ``..`` that stays inside ``root`` once symbolic links are resolved."""
    root = Path(root)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise SparsearchError(f"{what}: {name!r} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise SparsearchError(f"{what}: {name!r} is not a path inside {root}")
    path = root / rel
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise SparsearchError(f"{what}: {name!r} leads outside {root} (a symbolic link to {real})")
    return path


def no_symlink(path: str | os.PathLike, what: str) -> Path:
    """``path``, refused when it is a symbolic link (a log appended through one writes elsewhere)."""
    path = Path(path)
    if path.is_symlink():
        raise SparsearchError(f"{what} {path} is a symbolic link; sparsearch reads and writes only its own files "
                              "there (replace it by the file itself)")
    return path


def is_empty(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but sparsearch's marker and lock."""
    return not (set(os.listdir(folder)) - set(OWN_FILES))


class Lock:
    """An exclusive lock on ``folder`` (see the module docstring); :meth:`release` ends it."""

    def __init__(self, folder: Path, fd: int, created: bool):
        self.folder, self.fd, self.created = folder, fd, created
        self.marked = False  # the marker was written by this command

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            (self.folder / LOCK).unlink(missing_ok=True)  # while still held: the next taker makes a new one
            if (self.created or self.marked) and is_empty(self.folder):  # nothing written: leave nothing behind
                if self.marked:
                    (self.folder / MARKER).unlink(missing_ok=True)
                if self.created:
                    self.folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None
            if self in _HELD:
                _HELD.remove(self)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: list[Lock] = []  # in the order taken


def release_all() -> None:
    """Release every lock this process holds, the last taken first (a supernet inside a run
    directory before it), as the command line does when a command ends."""
    for lock in reversed(list(_HELD)):
        lock.release()


def holder(folder: str | os.PathLike) -> int | None:
    """The PID recorded in ``folder``'s lock file, if any."""
    try:
        return int((Path(folder) / LOCK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def lock(folder: str | os.PathLike, what: str, *, create: bool = True, read_only_ok: bool = False) -> Lock | None:
    """Take the exclusive lock of ``folder`` (made first when ``create``), or raise one line
    naming the process that holds it. With ``read_only_ok``, a folder where no lock file can be
    made (a read-only one) gives None: the command goes on without the lock."""
    folder = Path(folder)
    created = False
    if create and not folder.exists():
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise SparsearchError(f"cannot write {folder}: {e.strerror or e}") from None
    path = folder / LOCK
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SparsearchError(f"{path} is a symbolic link; remove it") from None
            if read_only_ok and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return None
            raise SparsearchError(f"cannot lock {what} {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder(folder)
            raise SparsearchError(f"{what} {folder} is in use by process {pid if pid is not None else '(unknown)'} "
                                  f"(it holds {path}); wait for it to end, or stop it") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as it released it: lock the new one
        time.sleep(0.01)
    else:
        raise SparsearchError(f"cannot lock {what} {folder}: its lock file keeps changing")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    held = Lock(folder, fd, created)
    _HELD.append(held)
    return held


def claim(folder: str | os.PathLike, what: str, flag: str, *, mark: str = MARKER, write_mark: bool = True) -> Lock:
    """Lock the folder a command writes (``flag`` names its option): a new or empty folder, or
    one that holds ``mark`` (a run directory's marker, written here when ``write_mark``; a
    supernet's manifest). Anything else is refused before anything is written there."""
    if not str(folder):
        raise SparsearchError(f"{flag} must not be empty")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SparsearchError(f"{flag} {folder} is not a folder")

    def foreign() -> bool:
        return folder.is_dir() and not os.path.lexists(folder / mark) and not is_empty(folder)

    def refuse() -> SparsearchError:
        return SparsearchError(f"{flag} {folder} is a folder with other files and not a sparsearch {what} (no {mark}); "
                               "choose a new or empty folder")

    if foreign():
        raise refuse()
    held = lock(folder, what)
    if foreign():  # filled by another process meanwhile
        held.release()
        raise refuse()
    if write_mark and not os.path.lexists(folder / mark):
        try:
            no_symlink(folder / mark, "marker")
            from sparsearch.base.atomic import atomic_write

            atomic_write(folder / mark, (json.dumps({"sparsearch": what}) + "\n").encode())
            held.marked = True
        except BaseException:
            held.release()
            raise
    return held
