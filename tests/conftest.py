"""Fixtures for the whole suite. Nothing here imports torch at import time: pytest loads this
file for ``tests/unit/`` too, and the unit tier never imports torch (fixtures that need it
import it when they run). Shared helpers live in ``tests.helpers``."""

import os
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """At most 2 torch threads, in a session whose tests import torch (a unit-only session does not)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tokens():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 128, (6, 24), generator=g)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved tiny Llama with its tokenizer, and a text file for calibration/evaluation."""
    from tests.helpers.tiny import TEXT, tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=128)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "text.txt").write_text(TEXT)
    return root


# Until tests/test_bad_input.py imports from tests.helpers.tiny (its one `from tests.helpers.tiny import
# tiny_model, tiny_tokenizer`), this module also answers to the name `conftest`, lazily.
_TINY = {"ARCHS", "TEXT", "tiny_model", "tiny_tokenizer"}


def __getattr__(name):
    if name in _TINY:
        from tests.helpers import tiny

        return getattr(tiny, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules.setdefault("conftest", sys.modules[__name__])
