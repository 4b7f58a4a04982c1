"""Supernet: per-unit local-pruning variants at a ladder of sparsities, built once, stored on disk."""

from sparsearch.supernet.adapters import SUPPORTED_ARCHITECTURES, DecoderAdapter
from sparsearch.supernet.build import build_supernet
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.stitch import Stitcher
from sparsearch.supernet.store import SupernetStore

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "DecoderAdapter",
    "Stitcher",
    "SupernetConfig",
    "SupernetStore",
    "build_supernet",
]
