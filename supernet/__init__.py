"""Supernet: per-unit local-pruning variants at a ladder of sparsities, built once, stored on disk."""

from supernet.adapters import SUPPORTED_ARCHITECTURES, DecoderAdapter
from supernet.build import build_supernet
from supernet.config import SupernetConfig
from supernet.stitch import Stitcher
from supernet.store import SupernetStore

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "DecoderAdapter",
    "Stitcher",
    "SupernetConfig",
    "SupernetStore",
    "build_supernet",
]
