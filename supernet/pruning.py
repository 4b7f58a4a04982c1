"""Pure tensor functions for structured local pruning of one linear layer's input columns.

All functions take the output projection's weight ``W`` (out x in) and the Hessian of its input,
``H = X^T X`` (in x in, summed over calibration tokens), and work on *blocks* of input columns
(one attention head = ``head_dim`` columns, one MLP channel = 1 column).

- :func:`obs_removal_order`: greedy Optimal-Brain-Surgeon removal (ZipLM / Týr style): at each
  step remove the block whose removal, with optimal compensation of the remaining weights, adds
  the least output error ``tr(W_S (H^-1_SS)^-1 W_S^T)``; then update ``W`` and ``H^-1``.
- :func:`magnitude_removal_order`: a cheaper one-shot criterion, activation-weighted magnitude
  ``sum_j ||W[:, j]||^2 * H_jj`` per block.
- :func:`refit`: the OBS-consistent refit of the kept columns with the damped Hessian
  ``Hd = H + lambda I``: ``W_K' = W Hd[:, K] Hd[K, K]^-1 = W_K + W_D H[D, K] (H[K, K] + lambda I)^-1``,
  the minimiser of ``||X W^T - X_K W_K'^T||^2 + lambda ||W_K' - W_K||^2`` (dropped columns ``D``).
  It returns ``W`` when nothing is dropped; with ``lambda = 0`` it is plain least squares.
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
    out = H.clone()
    out.diagonal().add_(lam)
    return out


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
    """OBS-consistent weights for the kept input columns ``kept`` (sorted indices), in ``W``'s dtype.

    The damping regularises the *change* of the kept weights (towards ``W_K``), not the weights
    themselves: ``W_K + W_D H[D, K] (H[K, K] + lambda I)^-1`` with ``lambda`` relative to the mean
    of ``diag(H)`` as in the OBS removal order. With every column kept it is ``W``; with
    ``damping=0`` and the dropped columns' inputs being linear combinations of the kept ones, the
    layer's output on the calibration inputs is reproduced exactly. (A caller refitting many
    subsets of one layer can pass ``damp(H.double(), damping)`` and ``damping=0``.)
    """
    n = W.shape[1]
    if kept.numel() == 0:
        return W[:, :0].clone()
    if kept.numel() == n:
        return W.detach()[:, kept].clone()
    H64 = damp(H.detach().to(torch.float64), damping)
    dropped = torch.ones(n, dtype=torch.bool, device=W.device)
    dropped[kept] = False
    W64 = W.detach().to(torch.float64)
    rhs = W64[:, dropped] @ H64[dropped][:, kept]  # out x k: what the dropped columns carried
    delta = torch.linalg.solve(H64[kept][:, kept], rhs.T).T
    return (W64[:, kept] + delta).to(W.dtype)
