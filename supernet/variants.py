"""Local pruning of one unit into its ladder of level variants.

Attention: query heads are removed greedily (OBS on the output projection, error per removed
parameter, so that removing the last head of a KV group is credited with the group's k/v rows);
a KV group goes when its last query head goes. Each level takes the state of that removal path
whose kept parameters are closest to the level's target (balanced mode: the closest
``groups x heads-per-group`` shape, keeping the groups and heads removed last). MLP: channels are
removed in OBS (or magnitude) order; a level keeps its aligned count of the last-removed channels.
Every level's output projection is refit by least squares on the kept columns.

A variant holds only what differs from the dense block: the kept indices (``kept_heads`` and
``kept_kv_heads``, or ``kept_channels``; int32) and the refit output projection (``o_proj.weight``
or ``down_proj.weight``; none with ``refit=False``). The kept rows of q/k/v and gate/up (and their
biases, Qwen3's q/k norms) are slices of the dense weights, taken when a variant is stitched
(:mod:`sparsearch.supernet.modules`).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from sparsearch.search.space import Ladder
from sparsearch.supernet import pruning
from sparsearch.supernet.config import SupernetConfig

Tensor = torch.Tensor


INDEX_DTYPE = torch.int32


@dataclass
class Variant:
    """One level of one unit. ``tensors`` (kept indices and the refit output projection) is
    ``None`` for the dense level and for removal."""

    sparsity: float
    params: int
    kept: dict[str, int]
    tensors: dict[str, Tensor] | None = None


def attention_params(heads: int, groups: int, hidden: int, head_dim: int, bias: bool) -> int:
    """Prunable parameters of an attention block: q/k/v/o weights and q/k/v biases."""
    per_head = 2 * hidden * head_dim + (head_dim if bias else 0)
    per_group = 2 * hidden * head_dim + (2 * head_dim if bias else 0)
    return heads * per_head + groups * per_group


def mlp_params(channels: int, hidden: int, bias: bool) -> int:
    """Prunable parameters of a gated MLP: gate/up/down weights and gate/up biases."""
    return channels * (3 * hidden + (2 if bias else 0))


def _closest(options: list[tuple[int, object]], goal: float) -> object:
    return min(options, key=lambda o: (abs(o[0] - goal), o[0]))[1]


def attention_states(
    order: list[int], num_kv_heads: int, hidden: int, head_dim: int, bias: bool, *, balanced: bool
) -> list[tuple[int, frozenset[int]]]:
    """The kept query-head sets a level may take, with their parameters, given the heads' removal
    ``order`` (first = least important): every prefix of the order (a KV group goes with its last
    head), or in balanced mode the ``groups x heads-per-group`` shapes keeping the groups and
    heads removed last."""
    nq = len(order)
    hpg = nq // num_kv_heads
    if not balanced:
        states = []
        for k in range(nq + 1):
            kept = frozenset(range(nq)) - frozenset(order[:k])
            groups = len({h // hpg for h in kept})
            states.append((attention_params(len(kept), groups, hidden, head_dim, bias), kept))
        return states
    rank = {h: i for i, h in enumerate(order)}  # later removal = more important
    group_rank = sorted(range(num_kv_heads), key=lambda g: -max(rank[h] for h in range(g * hpg, (g + 1) * hpg)))
    states = [(0, frozenset())]
    for g in range(1, num_kv_heads + 1):
        for h in range(1, hpg + 1):
            kept = set()
            for grp in group_rank[:g]:
                kept.update(sorted(range(grp * hpg, (grp + 1) * hpg), key=lambda x: -rank[x])[:h])
            states.append((attention_params(g * h, g, hidden, head_dim, bias), frozenset(kept)))
    return states


def level_heads(states: list[tuple[int, frozenset[int]]], sparsity: float, dense: int) -> list[int]:
    """The kept query heads of the level at nominal ``sparsity``: the state closest to keeping
    ``1 - sparsity`` of the ``dense`` parameters."""
    return sorted(_closest(states, (1.0 - sparsity) * dense))


def attention_variants(
    attn: nn.Module, H: Tensor, num_kv_heads: int, ladder: Ladder, cfg: SupernetConfig
) -> list[Variant]:
    """All ladder levels of one attention block, given ``H`` of its ``o_proj`` input."""
    hd = attn.head_dim
    W = attn.o_proj.weight
    hidden = W.shape[0]
    nq = W.shape[1] // hd
    hpg = nq // num_kv_heads
    bias = attn.q_proj.bias is not None
    group_of = torch.arange(nq, device=W.device) // hpg
    per_head = 2 * hidden * hd + (hd if bias else 0)
    per_group = 2 * hidden * hd + (2 * hd if bias else 0)
    blocks = torch.arange(nq * hd, device=W.device).view(nq, hd)

    if cfg.criterion == "obs":

        def per_param(err: Tensor, alive: Tensor) -> Tensor:
            alive_per_group = torch.bincount(group_of[alive], minlength=num_kv_heads)
            last = alive_per_group[group_of[alive]] == 1
            return err / (per_head + last.to(err.dtype) * per_group)

        order = pruning.obs_removal_order(W, H, blocks, damping=cfg.damping, score=per_param)
    else:
        order = pruning.magnitude_removal_order(W, H, blocks)

    dense = attention_params(nq, num_kv_heads, hidden, hd, bias)
    states = attention_states(order, num_kv_heads, hidden, hd, bias, balanced=cfg.balanced_heads)
    H64 = pruning.damp(H.detach().to(torch.float64), cfg.damping)  # damped once for every level's refit
    variants = []
    for s in ladder.sparsities:
        kept_heads = level_heads(states, s, dense)
        heads = torch.tensor(kept_heads, dtype=torch.long, device=W.device)
        groups = torch.unique(group_of[heads]) if heads.numel() else heads
        params = attention_params(len(kept_heads), groups.numel(), hidden, hd, bias)
        kept = {"heads": len(kept_heads), "kv_heads": int(groups.numel())}
        if params == dense or params == 0:
            variants.append(Variant(s, params, kept))
            continue
        tensors = {"kept_heads": heads.to(INDEX_DTYPE), "kept_kv_heads": groups.to(INDEX_DTYPE)}
        if cfg.refit:
            tensors["o_proj.weight"] = pruning.refit(W, H64, blocks[heads].flatten(), damping=0.0)
        variants.append(Variant(s, params, kept, tensors))
    return variants


def mlp_kept_channels(sparsity: float, intermediate: int, alignment: int) -> int:
    """Channels kept at a nominal sparsity: a multiple of ``alignment`` (or all), 0 when removed."""
    if sparsity >= 1.0:
        return 0
    if sparsity <= 0.0:
        return intermediate
    k = round((1.0 - sparsity) * intermediate / alignment) * alignment
    return int(min(max(k, min(alignment, intermediate)), intermediate))


def mlp_variants(mlp: nn.Module, H: Tensor, ladder: Ladder, cfg: SupernetConfig) -> list[Variant]:
    """All ladder levels of one gated MLP block, given ``H`` of its ``down_proj`` input."""
    W = mlp.down_proj.weight
    hidden, inter = W.shape
    bias = mlp.gate_proj.bias is not None
    blocks = torch.arange(inter, device=W.device).unsqueeze(1)
    if cfg.criterion == "obs":
        chunk = cfg.mlp_chunk or max(1, inter // 256)
        order = pruning.obs_removal_order(W, H, blocks, damping=cfg.damping, chunk=chunk)
    else:
        order = pruning.magnitude_removal_order(W, H, blocks)
    order_t = torch.tensor(order, dtype=torch.long, device=W.device)
    H64 = pruning.damp(H.detach().to(torch.float64), cfg.damping)  # damped once for every level's refit

    variants = []
    for s in ladder.sparsities:
        k = mlp_kept_channels(s, inter, cfg.mlp_alignment)
        params = mlp_params(k, hidden, bias)
        if k in (0, inter):
            variants.append(Variant(s, params, {"channels": k}))
            continue
        rows = torch.sort(order_t[inter - k :]).values
        tensors = {"kept_channels": rows.to(INDEX_DTYPE)}
        if cfg.refit:
            tensors["down_proj.weight"] = pruning.refit(W, H64, rows, damping=0.0)
        variants.append(Variant(s, params, {"channels": k}, tensors))
    return variants


def cast_variants(variants: list[Variant], dtype: torch.dtype) -> list[Variant]:
    """Round floating tensors to the storage dtype (index tensors are left as they are)."""
    for v in variants:
        if v.tensors:
            v.tensors = {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in v.tensors.items()}
    return variants


def expectation_weights(variants: list[Variant]) -> list[float]:
    """Týr's (1 - s) weights, normalised, with ``s`` the variant's actual parameter sparsity."""
    dense = variants[0].params
    w = [v.params / dense for v in variants]
    total = sum(w)
    return [x / total for x in w]

