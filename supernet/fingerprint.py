"""Content fingerprints of a model and of calibration tokens (SHA-256 hex digests)."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from sparsearch.supernet.memory import release_file_pages

_SAMPLE = 4096


def _tensor_digest(h: "hashlib._Hash", t: torch.Tensor) -> None:
    flat = t.detach().reshape(-1)
    stride = max(1, flat.numel() // _SAMPLE)
    # rounded to bfloat16 so that float32 and bfloat16 loads of one checkpoint agree
    sample = flat[::stride][:_SAMPLE].cpu().to(torch.bfloat16).to(torch.float32).contiguous()
    h.update(sample.numpy().tobytes())


def model_fingerprint(model: nn.Module, *, release: bool = False) -> str:
    """Hash of the config and, per tensor, its name, shape and an evenly strided sample of its
    values. Cheap at any model size and changed by any retraining or re-quantisation. The strided
    sample touches every page of a tensor; with ``release`` (a layer-by-layer build, which reads
    the weights again one layer at a time), memory-mapped weights are released after hashing, so
    fingerprinting does not make the whole model resident."""
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "_attn_implementation", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}".encode())
        _tensor_digest(h, t)
        if release:
            release_file_pages([t])
    return h.hexdigest()


def tokens_fingerprint(tokens: torch.Tensor) -> str:
    h = hashlib.sha256(f"{tuple(tokens.shape)}".encode())
    h.update(tokens.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()
