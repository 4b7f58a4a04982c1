"""Run the sparsearch command line under a simulated fault (for tests/test_bad_input.py).

    python tests/faults.py readonly DIR -- ARGS...   # writes under DIR fail with EROFS
    python tests/faults.py fsize BYTES -- ARGS...    # no file may grow past BYTES (a full disk: EFBIG)

``readonly`` patches the file-creating calls of the os and io modules (root ignores a chmod, so a
read-only directory cannot be made portably); ``fsize`` is the kernel's RLIMIT_FSIZE.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import resource
import signal
import sys


def _read_only(root: str) -> None:
    root = os.path.realpath(root)

    def under(path) -> bool:
        try:
            p = os.path.realpath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return p == root or p.startswith(root + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & writes and under(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if under(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = open_
    os.open, os.mkdir = os_open, mkdir


def main() -> int:
    kind, arg, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: faults.py {readonly DIR|fsize BYTES} -- ARGS"
    if kind == "readonly":
        _read_only(arg)
    elif kind == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
    else:
        raise SystemExit(f"unknown fault {kind}")
    from sparsearch.launch.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
