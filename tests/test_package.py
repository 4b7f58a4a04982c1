"""The installed project is one import package, and search.py runs from any directory (as
`ray submit` runs it: copied alone into the head's home directory)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ["base", "search", "supernet", "fitness", "launch"])
def test_only_the_sparsearch_name_is_installed(name, tmp_path):
    r = _python("-c", f"import {name}", cwd=tmp_path)
    assert r.returncode != 0 and f"ModuleNotFoundError: No module named '{name}'" in r.stderr
    r = _python("-c", f"import sparsearch.{name}; print(sparsearch.{name}.__name__)", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"sparsearch.{name}", r.stderr


def test_the_search_package_does_not_import_torch(tmp_path):
    """search/ stays torch-free: importing the search package does not import torch."""
    r = _python("-c", "import sys, sparsearch.search.registry; print('torch' in sys.modules)", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_search_py_alone_in_an_empty_directory(tmp_path, model_dir):
    work = tmp_path / "home"
    work.mkdir()
    shutil.copy(ROOT / "search.py", work / "search.py")
    r = _python("search.py", "--help", cwd=work)
    assert r.returncode == 0 and "--target-sparsity" in r.stdout and "--calib-text" in r.stdout, r.stderr
    r = _python("search.py", "--model", str(model_dir / "model"), "--calib-text", str(model_dir / "text.txt"),
                "--calib-samples", "4", "--calib-seqlen", "32", "--mlp-alignment", "8", "--generations", "1",
                "--offspring", "2", "--schedule", "2:64,1:128", "--run-dir", "runs/x", "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    summary = json.loads((work / "runs" / "x" / "summary.json").read_text())
    assert summary["evaluations"] >= 2 and (work / "runs" / "x" / "export" / "config.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["runs", "search.py"]


def test_module_entry_point():
    r = _python("-m", "sparsearch.launch.cli", "--help", cwd=ROOT)
    assert r.returncode == 0
    for cmd in ("supernet", "eval", "search", "run", "export", "report"):
        assert cmd in r.stdout
