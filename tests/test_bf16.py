"""Numerics that users run in bfloat16, checked against float32/float64 references."""

import pytest
import torch

from sparsearch.supernet.accumulation import next_hidden
from sparsearch.supernet.variants import Variant, expectation_weights

BF16 = torch.bfloat16


def test_error_accumulation_rounds_to_bf16_once():
    """The (1 - s)-weighted expectation of nine variants' outputs added to a bf16 residual stream
    equals the float32 sum of the same bf16 values up to one bf16 rounding."""
    g = torch.Generator().manual_seed(0)
    shape = (2, 16, 64)
    hidden = [(torch.randn(shape, generator=g) * 8).to(BF16)]  # the residual stream dominates
    dense_out = [torch.randn(shape, generator=g).to(BF16)]
    outs = [torch.randn(shape, generator=g).to(BF16) for _ in range(7)]
    variants = ([Variant(0.0, 800, {})] + [Variant(s / 8, 800 - 100 * s, {}, {"i": torch.tensor(s - 1)})
                                            for s in range(1, 8)] + [Variant(1.0, 0, {})])
    got = next_hidden(hidden, dense_out, variants, lambda v: int(v.tensors["i"]), lambda i, b: outs[i],
                      accumulate=True)[0]
    w = expectation_weights(variants)
    ref = hidden[0].float() + w[0] * dense_out[0].float() + sum(wi * o.float() for wi, o in zip(w[1:8], outs))
    assert got.dtype == BF16
    one_rounding = ref.abs() * 2.0**-8 + 1e-30
    assert ((got.float() - ref).abs() <= one_rounding).all()
