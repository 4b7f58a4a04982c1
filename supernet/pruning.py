"""Pure tensor functions for structured local pruning of one linear layer's input columns.

All functions take the output projection's weight ``W`` (out x in) and the Hessian of its input,
``H = X^T X`` (in x in, summed over calibration tokens), and work on *blocks* of input columns
(one attention head = ``head_dim`` columns, one MLP channel = 1 column).

- :func:`obs_removal_order`: greedy Optimal-Brain-Surgeon removal (ZipLM / Týr style): at each
  step remove the block whose removal, with optimal compensation of the remaining weights, adds
  the least output error ``tr(W_S (H^-1_SS)^-1 W_S^T)``; then update ``W`` and ``H^-1``.
- :func:`magnitude_removal_order`: a cheaper one-shot criterion, activation-weighted magnitude
  ``sum_j ||W[:, j]||^2 * H_jj`` per block.
- :func:`refit`: least-squares refit of the kept columns, ``W_K = W H_:K (H_KK + lambda I)^-1``,
  the minimiser of ``||X W^T - X_K W_K^T||^2``.
"""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def damp(H: Tensor, damping: float) -> Tensor:
    """``H + damping * mean(diag(H)) * I`` (relative damping; 0 leaves ``H`` unchanged)."""
    if damping <= 0:
        return H
    lam = damping * torch.diagonal(H).mean().clamp_min(torch.finfo(H.dtype).tiny)
    return H + lam * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)


def block_error(W: Tensor, Hinv: Tensor, blocks: Tensor) -> Tensor:
    """OBS error of removing each block alone: ``tr(W_S (Hinv_SS)^-1 W_S^T)`` for every row of ``blocks``."""
    Ws = W[:, blocks]  # out x G x b
    Hs = Hinv[blocks.unsqueeze(-1), blocks.unsqueeze(-2)]  # G x b x b
    if blocks.shape[1] == 1:
        return (Ws[..., 0] ** 2).sum(0) / Hs[:, 0, 0]
    return torch.einsum("ogb,gbc,ogc->g", Ws, torch.linalg.inv(Hs), Ws)


def obs_removal_order(
    W: Tensor,
    H: Tensor,
    blocks: Tensor,
    *,
    damping: float = 0.01,
    chunk: int = 1,
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> list[int]:
    """Greedy OBS order in which all blocks are removed (first = least important).

    ``blocks`` is a ``G x b`` index tensor of input columns. ``chunk`` blocks are removed per
    step (the ``chunk`` lowest scores, then one joint OBS update). ``score(err, alive)`` turns
    the errors of the blocks still present (indices ``alive``) into the quantity minimised,
    e.g. error per removed parameter.
    """
    work = W.detach().to(torch.float32).clone()
    Hd = damp(H.detach().to(torch.float64), damping)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd)).to(torch.float32)
    G = blocks.shape[0]
    removed = torch.zeros(G, dtype=torch.bool, device=W.device)
    order: list[int] = []
    while len(order) < G:
        alive = (~removed).nonzero().flatten()
        err = block_error(work, Hinv, blocks[alive])
        s = score(err, alive) if score is not None else err
        take = alive[torch.argsort(s, stable=True)[: max(1, min(chunk, len(alive)))]]
        if len(take) == len(alive):
            order.extend(take.tolist())
            break
        cols = blocks[take].flatten()
        Hss_inv = torch.linalg.inv(Hinv[cols][:, cols])
        work -= work[:, cols] @ Hss_inv @ Hinv[cols, :]
        Hinv -= Hinv[:, cols] @ Hss_inv @ Hinv[cols, :]
        work[:, cols] = 0
        removed[take] = True
        order.extend(take.tolist())
    return order


def magnitude_removal_order(W: Tensor, H: Tensor, blocks: Tensor) -> list[int]:
    """Order of removal by ascending activation-weighted magnitude ``sum ||W_j||^2 H_jj``."""
    col = (W.detach().to(torch.float32) ** 2).sum(0) * torch.diagonal(H).to(torch.float32)
    return torch.argsort(col[blocks].sum(1), stable=True).tolist()


def refit(W: Tensor, H: Tensor, kept: Tensor, *, damping: float = 0.01) -> Tensor:
    """Least-squares weights for the kept input columns ``kept`` (sorted indices).

    Returns ``W H[:, K] (H[K, K] + lambda I)^-1`` in ``W``'s dtype: with ``damping=0`` and the
    dropped columns' inputs being linear combinations of the kept ones, the layer's output on the
    calibration inputs is reproduced exactly.
    """
    if kept.numel() == 0:
        return W[:, :0].clone()
    H64 = H.detach().to(torch.float64)
    Hkk = damp(H64[kept][:, kept], damping)
    rhs = W.detach().to(torch.float64) @ H64[:, kept]  # out x k
    sol = torch.linalg.solve(Hkk, rhs.T).T
    return sol.to(W.dtype)
