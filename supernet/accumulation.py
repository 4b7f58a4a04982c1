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


def next_hidden(
    hidden: list[Tensor],
    dense_out: list[Tensor],
    variants: list[Variant],
    make_module: Callable[[Variant], nn.Module],
    run: Callable[[nn.Module, int], Tensor],
    *,
    accumulate: bool,
) -> list[Tensor]:
    """Residual stream after one block, per calibration batch.

    ``dense_out[b]`` is the dense block's output on batch ``b``; ``run(module, b)`` computes a
    variant module's output on batch ``b``. With ``accumulate=False`` this is exactly the dense
    model's stream ``hidden + dense_out``.
    """
    if not accumulate:
        return [h + o for h, o in zip(hidden, dense_out)]
    weights = expectation_weights(variants)
    f32 = torch.float32
    out = [h.to(f32) + weights[0] * o.to(f32) for h, o in zip(hidden, dense_out)]
    for v, w in zip(variants[1:], weights[1:]):
        if w == 0.0:
            continue
        if v.tensors is None:  # a level whose kept structure is the dense one
            for b, o in enumerate(dense_out):
                out[b] += w * o.to(f32)
            continue
        module = make_module(v)
        for b in range(len(hidden)):
            out[b] += w * run(module, b).to(f32)
    return [o.to(h.dtype) for o, h in zip(out, hidden)]
