import pytest
import torch

from sparsearch.supernet import pruning
from sparsearch.supernet.variants import attention_params, expectation_weights, mlp_kept_channels, mlp_params, Variant

F64 = torch.float64


def _data(n=400, d_in=12, d_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=F64)
    W = torch.randn(d_out, d_in, generator=g, dtype=F64)
    return X, W


def test_refit_recovers_output_when_dropped_inputs_are_combinations_of_kept():
    X, W = _data()
    X[:, 9] = 2.0 * X[:, 1] - X[:, 4]
    X[:, 10] = 0.5 * X[:, 0]
    X[:, 11] = X[:, 2] + X[:, 3] + X[:, 5]
    kept = torch.arange(9)
    Wk = pruning.refit(W, X.T @ X, kept, damping=0.0)
    assert Wk.shape == (5, 9)
    torch.testing.assert_close(X[:, kept] @ Wk.T, X @ W.T, rtol=1e-9, atol=1e-9)
    # plain truncation (no refit) does not
    assert (X[:, kept] @ W[:, kept].T - X @ W.T).abs().max() > 0.1


def _massive(n=512, d_in=64, d_out=16, seed=0):
    """Inputs with one massive-activation channel (x1000), as real LLMs have, and some correlation."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d_in // 2, generator=g, dtype=F64)
    X = torch.cat([base, base @ torch.randn(d_in // 2, d_in // 2, generator=g, dtype=F64) * 0.3
                   + 0.5 * torch.randn(n, d_in // 2, generator=g, dtype=F64)], 1)
    X[:, 3] *= 1000.0
    W = torch.randn(d_out, d_in, generator=g, dtype=F64)
    return X, W


def test_refit_with_every_column_kept_returns_w_exactly():
    for X, W in (_data(), _massive()):
        for dtype in (F64, torch.float32, torch.bfloat16):
            w = W.to(dtype)
            out = pruning.refit(w, X.T @ X, torch.arange(W.shape[1]), damping=0.01)
            assert out.dtype == dtype and torch.equal(out, w)


def test_refit_is_the_obs_consistent_update_under_damping():
    """W_K + W_D H_DK (H_KK + lambda I)^-1, not the ridge W H_:K (H_KK + lambda I)^-1 that shrinks W_K:
    with a massive channel the ridge's output error is much larger at 12.5% sparsity."""
    X, W = _massive()
    H = X.T @ X
    n = W.shape[1]
    dropped = torch.arange(n - n // 8, n)  # 12.5%, not the massive channel
    kept = torch.arange(n - n // 8)
    lam = 0.01 * torch.diagonal(H).mean()
    Hkk = H[kept][:, kept] + lam * torch.eye(len(kept), dtype=F64)
    consistent = W[:, kept] + W[:, dropped] @ H[dropped][:, kept] @ torch.linalg.inv(Hkk)
    ridge = W @ H[:, kept] @ torch.linalg.inv(Hkk)
    out = pruning.refit(W, H, kept, damping=0.01)
    torch.testing.assert_close(out, consistent, rtol=1e-9, atol=1e-9)

    def err(Wk):
        return ((X @ W.T - X[:, kept] @ Wk.T) ** 2).sum().item()

    assert err(out) == pytest.approx(err(consistent), rel=1e-9)
    assert err(ridge) > 1.5 * err(out)


def test_block_error_equals_least_squares_residual():
    X, W = _data()
    H = X.T @ X
    blocks = torch.arange(12).view(4, 3)
    Hinv = torch.linalg.inv(H)
    err = pruning.block_error(W, Hinv, blocks)
    for g in range(4):
        kept = torch.tensor([j for j in range(12) if j // 3 != g])
        Wk = pruning.refit(W, H, kept, damping=0.0)
        resid = ((X @ W.T - X[:, kept] @ Wk.T) ** 2).sum()
        assert err[g].item() == pytest.approx(resid.item(), rel=1e-8)


def test_obs_order_on_independent_inputs_is_sorted_weighted_norms():
    # diagonal H: err_j = ||W_j||^2 * H_jj, and removals do not interact
    scales = torch.tensor([3.0, 0.5, 2.0, 1.0, 0.1, 4.0], dtype=F64)
    X = torch.eye(6, dtype=F64) * scales
    W = torch.ones(2, 6, dtype=F64)
    order = pruning.obs_removal_order(W, X.T @ X, torch.arange(6).unsqueeze(1), damping=0.0)
    assert order == [4, 1, 3, 2, 0, 5]
    assert pruning.magnitude_removal_order(W, X.T @ X, torch.arange(6).unsqueeze(1)) == order


def test_obs_uses_correlations_that_magnitude_ignores():
    # inputs 0 and 1 are identical: either can go at zero cost (the other compensates);
    # input 2 is independent with a small weight: magnitude removes it first, OBS does not.
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, generator=g, dtype=F64), torch.randn(200, generator=g, dtype=F64)
    X = torch.stack([a, a, b], 1)
    W = torch.tensor([[1.0, 1.0, 0.3]], dtype=F64)
    H = X.T @ X
    blocks = torch.arange(3).unsqueeze(1)
    assert pruning.magnitude_removal_order(W, H, blocks)[0] == 2
    assert pruning.obs_removal_order(W, H, blocks, damping=1e-6)[0] in (0, 1)


def test_obs_chunked_removal_covers_every_block_once():
    X, W = _data(d_in=20)
    order = pruning.obs_removal_order(W, X.T @ X, torch.arange(20).unsqueeze(1), chunk=3)
    assert sorted(order) == list(range(20))


def test_obs_custom_score_changes_choice():
    X, W = _data(d_in=6)
    blocks = torch.arange(6).view(3, 2)
    base = pruning.obs_removal_order(W, X.T @ X, blocks)
    # make the first-removed block look prohibitively expensive
    first = base[0]
    score = lambda err, alive: err + 1e9 * (alive == first)
    assert pruning.obs_removal_order(W, X.T @ X, blocks, score=score)[0] != first


def test_param_formulas_by_hand():
    # hidden 8, head_dim 2: a query head costs q rows 2*8 + o columns 8*2 = 32; a kv group 2*(2*8) = 32
    assert attention_params(4, 2, 8, 2, bias=False) == 4 * 32 + 2 * 32
    assert attention_params(4, 2, 8, 2, bias=True) == 4 * (32 + 2) + 2 * (32 + 4)
    assert mlp_params(10, 8, bias=False) == 240


def test_mlp_kept_channels_alignment():
    assert mlp_kept_channels(0.0, 1536, 32) == 1536
    assert mlp_kept_channels(1.0, 1536, 32) == 0
    assert mlp_kept_channels(0.5, 1536, 32) == 768
    assert mlp_kept_channels(0.3, 1536, 32) % 32 == 0
    assert mlp_kept_channels(0.999, 1536, 32) == 32  # never rounds a kept block down to nothing


def test_expectation_weights_follow_kept_fraction():
    vs = [Variant(0.0, 100, {}), Variant(0.5, 50, {}), Variant(1.0, 0, {})]
    assert expectation_weights(vs) == pytest.approx([100 / 150, 50 / 150, 0.0])
