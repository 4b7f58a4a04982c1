"""Peak memory of a block of work: the process's resident set on the CPU (Linux), allocated
memory on an accelerator. Used to record a build's peak in its manifest and by benchmarks.

:func:`release_file_pages` lets a layer-by-layer pass keep only the layer it works on resident
when the weights are memory-mapped safetensors (how transformers loads them on the CPU)."""

from __future__ import annotations

import bisect
import ctypes
import functools
import gc
import mmap
from pathlib import Path
from typing import Iterable

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MAPS = Path("/proc/self/maps")
_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (clean file pages are dropped, re-read on access)


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes``: the highest memory in use during
    the block (CPU: resident set, whose high-water mark is reset on entry where Linux allows;
    accelerators: allocated memory) and ``m.extra_bytes``: the peak above the memory in use on entry."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.peak_bytes: int | None = None
        self.extra_bytes: int | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cpu":
            try:
                _CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident set
            except OSError:
                pass
            self._start = (_status_kib("VmRSS") or 0) * 1024
        else:
            mod = getattr(torch, self.device.type)
            mod.synchronize()
            mod.reset_peak_memory_stats(self.device)
            self._start = mod.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cpu":
            hwm = _status_kib("VmHWM")
            self.peak_bytes = hwm * 1024 if hwm is not None else None
        else:
            mod = getattr(torch, self.device.type)
            mod.synchronize()
            self.peak_bytes = mod.max_memory_allocated(self.device)
        self.extra_bytes = None if self.peak_bytes is None else max(self.peak_bytes - self._start, 0)


@functools.cache
def _madvise():
    """libc's ``madvise``, or ``None`` where it cannot be loaded."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def _file_mappings() -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` address ranges of this process's mappings of regular files."""
    ranges = []
    try:
        for line in _MAPS.read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/") and parts[4] != "0":  # inode 0: anonymous
                lo, hi = parts[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return sorted(ranges)


def release_file_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Ask the kernel to drop the resident pages of those CPU ``tensors`` that are views of a
    memory-mapped file, and return how many bytes were asked for.

    Only file-backed memory is touched (``madvise(MADV_PAGEOUT)``): its clean pages are re-read
    from the file when next accessed, so values never change; a page written since it was mapped
    is not file-backed any more, is kept (without swap) or swapped out, never lost; pages of a
    file not yet written back to disk stay until they are. Tensors in ordinary (anonymous) memory
    or on an accelerator, and kernels without ``MADV_PAGEOUT``, are left alone. Used by the
    supernet build to keep one layer's weights resident at a time."""
    madvise = _madvise()
    ranges = _file_mappings() if madvise is not None else []
    if not ranges:
        return 0
    starts = [lo for lo, _ in ranges]
    page = mmap.PAGESIZE
    asked, seen = 0, set()
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr in seen:
            continue
        seen.add(ptr)
        i = bisect.bisect_right(starts, ptr) - 1
        if i < 0 or ptr + size > ranges[i][1]:
            continue  # not inside one file mapping
        lo = -(-ptr // page) * page  # whole pages inside the storage only: neighbours keep theirs
        hi = (ptr + size) // page * page
        if hi > lo and madvise(lo, hi - lo, _MADV_PAGEOUT) == 0:
            asked += hi - lo
    return asked
