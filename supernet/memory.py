"""Peak memory of a block of work: the process's resident set on the CPU (Linux), allocated
memory on an accelerator. Used to record a build's peak in its manifest and by benchmarks."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


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

