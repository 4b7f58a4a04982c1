"""Tensor files read and written as safetensors only: nothing a file holds is ever unpickled.

A file that is missing, empty, truncated, of another format (a pickle planted in its place) or
without the tensors a reader needs is one :class:`~sparsearch.base.errors.SparsearchError` line
naming the file and what to do. torch and safetensors are imported when a file is read or written,
so importing this module stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from sparsearch.base.errors import SparsearchError, first_line


def tensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors bytes of ``tensors`` (contiguous CPU copies) with string ``metadata``."""
    from safetensors.torch import save

    return save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, metadata=dict(metadata or {}))


def read_tensors(path: str | Path, what: str, fix: str, *, need: Iterable[str] = (),
                 data: bytes | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of the safetensors file ``path`` (or of its bytes ``data``), which
    must hold every tensor named in ``need``; else one error line ``"{what} {path} ...; {fix}"``."""
    from safetensors.torch import load

    path = Path(path)
    try:
        if data is None:
            data = path.read_bytes()
    except FileNotFoundError:
        raise SparsearchError(f"{what} {path} is missing; {fix}") from None
    except OSError as e:
        raise SparsearchError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not data:
        raise SparsearchError(f"{what} {path} is empty; {fix}")
    try:
        tensors = load(data)
        metadata = _metadata(data)
    except Exception as e:  # safetensors raises its own error types, and ValueError/OverflowError on bad headers
        raise SparsearchError(f"{what} {path} is not a readable safetensors file ({first_line(e)}); {fix}") from None
    missing = sorted(set(need) - set(tensors))
    if missing:
        raise SparsearchError(f"{what} {path} has no tensor {', '.join(missing)}; {fix}")
    return tensors, metadata


def _metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors file's header (``__metadata__``)."""
    import json

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}
