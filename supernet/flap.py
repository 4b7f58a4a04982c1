"""FLAP: fluctuation-based adaptive structured pruning (An et al., AAAI 2024, arXiv 2312.11983).

An input channel of ``o_proj`` (attention) or ``down_proj`` (MLP) is scored by its *fluctuation*:
the variance of the channel over calibration tokens times the squared norm of its weight column,
i.e. how much the block's output would move if the channel were replaced by its mean. Scores are
standardised within each layer's block (zero mean, unit variance over its channels); an attention
head scores the mean of its channels. One global threshold over all heads and channels then
decides how many groups each unit keeps, so whole blocks can go; :func:`search.allocation.from_scores`
finds the threshold that spends the run's budget on the supernet's ladders.

FLAP's bias compensation is not used: the supernet's variants carry their own least-squares refit.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from sparsearch.search.allocation import from_scores
from sparsearch.search.budget import Budget
from sparsearch.search.space import Genome, SearchSpace
from sparsearch.search.starts import StartContext
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.capture import InputMoments


def _standardise(x: torch.Tensor) -> torch.Tensor:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


@torch.no_grad()
def fluctuation_scores(model: nn.Module, moments: InputMoments) -> dict[tuple[int, str], list[float]]:
    """Standardised fluctuation scores: per (layer, "attn") one per query head, per (layer, "mlp")
    one per intermediate channel (``moments``: :func:`supernet.capture.input_moments` of ``model``)."""
    shape = DecoderAdapter(model).shape
    scores = {}
    for layer in range(shape.num_layers):
        for kind, path in (("attn", "self_attn.o_proj"), ("mlp", "mlp.down_proj")):
            name = f"{layer}.{path}"
            fluct = moments.variance(name) * moments.linears[name].weight.float().square().sum(0)
            z = _standardise(fluct)
            if kind == "attn":
                z = z.reshape(shape.num_heads, shape.head_dim).mean(1)
            scores[(layer, kind)] = z.tolist()
    return scores


def flap_genome(
    model: nn.Module, space: SearchSpace, budget: Budget, moments: InputMoments, rng: random.Random
) -> tuple[Genome, dict]:
    """The FLAP allocation on ``space`` under ``budget``."""
    scores = fluctuation_scores(model, moments)
    genome = from_scores(space, budget, [scores[(u.layer, u.kind)] for u in space.units], rng)
    return genome, {}


def flap_start(ctx: StartContext, config) -> Genome:
    """The registered ``flap`` start (:data:`sparsearch.search.registry.STARTS`): FLAP's allocation of
    the dense model's activations."""
    return flap_genome(ctx.model, ctx.space, ctx.budget, ctx.activations(), ctx.rng())[0]
