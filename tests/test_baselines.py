"""OWL's layer ratios and FLAP's fluctuation scores on tiny models (the allocations they feed, and
engines started from them: tests/unit/test_allocation.py)."""

import pytest
import torch

from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.capture import input_moments
from sparsearch.supernet.flap import fluctuation_scores
from sparsearch.supernet.owl import layer_sparsities, outlier_ratios
from tests.helpers.tiny import tiny_model


def test_owl_map_is_linear_in_the_outlier_ratio_and_averages_the_target():
    s = layer_sparsities([0.01, 0.02, 0.03], target=0.5, lam=0.1)
    assert s == pytest.approx([0.6, 0.5, 0.4])
    assert layer_sparsities([0.02, 0.02], target=0.3) == pytest.approx([0.3, 0.3])


def test_owl_finds_the_layer_with_planted_outliers():
    model = tiny_model("llama", layers=3, seed=1)
    with torch.no_grad():
        DecoderAdapter(model).layers[1].mlp.up_proj.weight[:, :3] *= 50.0  # a few huge input columns
    tokens = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    ratios = outlier_ratios(model, input_moments(model, tokens, batch_size=2), m=5.0)
    assert len(ratios) == 3 and all(0.0 <= r < 1.0 for r in ratios)
    assert ratios[1] > max(ratios[0], ratios[2])


def test_flap_scores_match_a_direct_computation_and_rank_a_dead_channel_last():
    model = tiny_model("qwen2", layers=2, seed=2)
    adapter = DecoderAdapter(model)
    with torch.no_grad():
        adapter.mlp(0).down_proj.weight[:, 5] = 0.0  # channel 5 of layer 0's MLP cannot move the output
    tokens = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(1))
    scores = fluctuation_scores(model, input_moments(model, tokens, batch_size=2))
    assert len(scores[(0, "attn")]) == 4 and len(scores[(0, "mlp")]) == 64
    mlp0 = torch.tensor(scores[(0, "mlp")])
    assert mlp0.argmin().item() == 5 and mlp0.mean().abs() < 1e-5 and mlp0.std().item() == pytest.approx(1.0, rel=1e-4)

    seen = []
    handle = adapter.attention(1).o_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        for start in range(0, 3, 2):
            model(input_ids=tokens[start:start + 2], use_cache=False)
    handle.remove()
    x = torch.cat(seen).double()
    fluct = x.var(0, unbiased=False) * adapter.attention(1).o_proj.weight.double().square().sum(0)
    z = (fluct - fluct.mean()) / fluct.std()
    assert scores[(1, "attn")] == pytest.approx(z.reshape(4, 8).mean(1).tolist(), abs=1e-4)
