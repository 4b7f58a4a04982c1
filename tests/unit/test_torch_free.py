"""The unit tier and the packages it tests never import torch: search/ and base/ are used by
processes that have no model (a search driver on a cluster head), and `python -m pytest
tests/unit` stays fast because torch is never loaded."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports_torch(modules: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_search_and_base_packages_do_not_import_torch(tmp_path):
    """Every module of sparsearch.search and sparsearch.base (an installed package, from anywhere)."""
    import pkgutil

    import sparsearch.base
    import sparsearch.search

    modules = [f"{pkg.__name__}.{m.name}" for pkg in (sparsearch.search, sparsearch.base)
               for m in pkgutil.iter_modules(pkg.__path__)]
    assert "sparsearch.search.tpe" in modules and "sparsearch.base.settings" in modules
    r = _imports_torch(modules, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_unit_tests_and_their_conftests_do_not_import_torch():
    """What pytest imports for `python -m pytest tests/unit`: both conftest.py files, the helpers
    the tests use, and every test module here."""
    here = Path(__file__).parent
    modules = ["tests.conftest", "tests.unit.conftest", "tests.helpers.synthetic", "tests.helpers.kill_target"]
    modules += [f"tests.unit.{p.stem}" for p in sorted(here.glob("test_*.py"))]
    r = _imports_torch(modules, ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
