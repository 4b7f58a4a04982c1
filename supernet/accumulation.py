"""Expectation error accumulation (Týr-the-Pruner).

Without it, every layer is pruned on the dense model's activations, as if no earlier layer were
pruned. With it, the hidden states passed on to the next block are the residual stream plus the
(1 - s)-weighted expectation of the block's outputs over all its level variants, so later layers
are pruned on inputs that carry the error the earlier layers will introduce.

The weighted sum is taken in float32 and rounded to the model's dtype once: in bfloat16, each
of up to nine rounded adds into the residual stream would cost more precision than the
accumulation signal carries.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sparsearch.supernet.variants import Variant, expectation_weights

Tensor = torch.Tensor


def advance(
    hidden: list[Tensor],
    variants: list[Variant],
    dense: nn.Module,
    make_module: Callable[[Variant], nn.Module],
    run: Callable[[nn.Module, int], Tensor],
    *,
    accumulate: bool,
) -> None:
    """Replace ``hidden[b]`` (the residual stream entering the block, per calibration batch) by
    the stream after the block, one batch at a time, so that one copy of the stream is held.

    ``run(module, b)`` computes a block module's output on batch ``b`` (reading ``hidden[b]``).
    With ``accumulate=False`` this is the dense model's stream ``hidden + dense(hidden)``;
    otherwise the dense output is replaced by the (1 - s)-weighted expectation over the variants.
    """
    if not accumulate:
        for b in range(len(hidden)):
            hidden[b] = hidden[b] + run(dense, b)
        return
    terms: dict[int, tuple[nn.Module, float]] = {}  # module -> total weight (dense-shaped levels share one)
    for v, w in zip(variants, expectation_weights(variants)):
        if w == 0.0:
            continue
        module = dense if v.tensors is None else make_module(v)
        total = terms[id(module)][1] if id(module) in terms else 0.0
        terms[id(module)] = (module, total + w)
    f32 = torch.float32
    for b in range(len(hidden)):
        acc = hidden[b].to(f32, copy=True)  # the runs below still read hidden[b]
        for module, w in terms.values():
            acc += w * run(module, b).to(f32)
        hidden[b] = acc.to(hidden[b].dtype)
