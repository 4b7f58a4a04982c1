"""Releasing memory-mapped weights: resident pages go, values stay."""

import copy
import os
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import tiny_model
from sparsearch.supernet import SupernetConfig, build_supernet
from sparsearch.supernet.memory import release_file_pages


def _resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            inside = len(head) == 6 and Path(head[5]) == path
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.fixture
def mapped(tmp_path):
    """A tiny Llama with page-sized weights, saved and loaded back (memory-mapped safetensors)."""
    from transformers import AutoModelForCausalLM

    tiny_model("llama", hidden_size=256, intermediate_size=512, head_dim=64).save_pretrained(tmp_path / "m")
    os.sync()  # pages of a file still being written back cannot be released yet
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    return model, (tmp_path / "m" / "model.safetensors").resolve()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_released_weights_leave_the_resident_set_and_read_back_equal(mapped):
    model, weights = mapped
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    size = weights.stat().st_size
    if _resident_bytes(weights) < 0.5 * size:
        pytest.skip("this transformers copies safetensors weights into memory instead of mapping them")
    asked = release_file_pages(model.parameters())
    assert asked > 0.9 * size
    assert _resident_bytes(weights) < 0.1 * size
    torch.testing.assert_close(_logits(model, ids), before, rtol=0, atol=0)
    assert _resident_bytes(weights) > 0.5 * size  # read back from the file on use


def test_weights_in_ordinary_memory_are_left_alone():
    model = tiny_model("llama", hidden_size=256, intermediate_size=512, head_dim=64)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    assert release_file_pages(model.parameters()) == 0
    torch.testing.assert_close(_logits(model, ids), before, rtol=0, atol=0)


def test_a_build_from_mapped_weights_stores_what_a_build_from_memory_stores(mapped, tmp_path):
    model, _ = mapped
    in_memory = copy.deepcopy(model)  # ordinary memory: nothing to release
    tokens = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    cfg = SupernetConfig(batch_size=2, mlp_alignment=8, store_dtype="float32")
    a = build_supernet(model, tokens, str(tmp_path / "a"), cfg, progress=False)
    b = build_supernet(in_memory, tokens, str(tmp_path / "b"), cfg, progress=False)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.safetensors"))
    assert files_a == files_b and files_a
    for f in files_a:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a.manifest["units"] == b.manifest["units"]


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_a_build_s_fingerprint_leaves_the_weights_unread(mapped):
    """The fingerprint samples every page of every tensor; for a build it releases them behind it."""
    from sparsearch.supernet.fingerprint import model_fingerprint

    model, weights = mapped
    plain = model_fingerprint(model)
    if _resident_bytes(weights) < 0.5 * weights.stat().st_size:
        pytest.skip("this transformers copies safetensors weights into memory instead of mapping them")
    assert model_fingerprint(model, release=True) == plain
    assert _resident_bytes(weights) < 0.1 * weights.stat().st_size
