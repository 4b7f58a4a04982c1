"""The unit tier: pure tests that never import torch (nor transformers), so that `python -m
pytest tests/unit` runs in well under a minute on two cores.

Two things keep it so. A test that imports torch while it runs fails here when the session has
not imported torch otherwise (a unit-only session); test_torch_free checks what is imported
before any test runs. And ``tmp_path`` is on a RAM disk where there is one: the engines' run
files append and fsync a line per evaluation, and Optuna's journal takes a file lock per trial,
which on a busy disk made these tests several times slower without testing anything more."""

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

RAM_DISK = Path("/dev/shm")


@pytest.fixture(scope="session")
def _torch_free_session():
    return "torch" not in sys.modules


@pytest.fixture(autouse=True)
def _no_torch(_torch_free_session):
    before = "torch" in sys.modules
    yield
    if _torch_free_session and not before:  # only the test that imported it fails
        assert "torch" not in sys.modules, "a unit test imported torch: it belongs in tests/, not tests/unit/"


@pytest.fixture
def tmp_path(request, tmp_path_factory):
    """pytest's ``tmp_path``, on a RAM disk where there is one (removed after the test)."""
    if not (RAM_DISK.is_dir() and os.access(RAM_DISK, os.W_OK) and shutil.disk_usage(RAM_DISK).free > 1 << 30):
        yield tmp_path_factory.mktemp(re.sub(r"\W", "_", request.node.name)[:30], numbered=True)
        return
    path = Path(tempfile.mkdtemp(prefix="sparsearch-unit-", dir=RAM_DISK))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
