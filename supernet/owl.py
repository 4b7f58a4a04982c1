"""OWL: outlier-weighted layerwise sparsity (Yin et al., ICML 2024, arXiv 2310.05175).

A weight's Wanda score is ``|W_ij| * ||X_j||`` (its magnitude times the norm of its input feature
over calibration tokens). A decoder layer's *outlier ratio* is the fraction of its weights (all of
its q/k/v/o and gate/up/down projections together) whose score exceeds ``m`` times the layer's mean
score. Layers with more outliers are pruned less: the ratios are mapped linearly onto kept
fractions spanning ``2 * lam`` and shifted to average ``1 - target``.

Here the layer's sparsity applies to both of its units (attention and MLP), and
:func:`search.allocation.from_sparsities` places the targets on the supernet's ladders under the
run's budget. OWL was proposed for unstructured sparsity; this is its layer allocation used as a
structured baseline.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from torch import nn

from sparsearch.search.allocation import from_sparsities
from sparsearch.search.budget import Budget
from sparsearch.search.space import Genome, SearchSpace
from sparsearch.search.starts import StartContext
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.capture import PROJECTIONS, InputMoments


@torch.no_grad()
def outlier_ratios(model: nn.Module, moments: InputMoments, *, m: float = 5.0) -> list[float]:
    """Per decoder layer, the fraction of its weights whose Wanda score exceeds ``m`` x its mean
    (``moments``: :func:`supernet.capture.input_moments` of ``model``)."""
    ratios = []
    for i in range(len(DecoderAdapter(model).layers)):
        scores = [moments.linears[f"{i}.{p}"].weight.float().abs() * moments.sq_norm(f"{i}.{p}").sqrt()
                  for p in PROJECTIONS]
        total = sum(s.numel() for s in scores)
        mean = sum(s.sum().item() for s in scores) / total
        ratios.append(sum((s > m * mean).sum().item() for s in scores) / total)
    return ratios


def layer_sparsities(ratios: Sequence[float], target: float, lam: float = 0.08) -> list[float]:
    """OWL's map: kept fractions linear in the outlier ratio over a span of ``2 * lam``, averaging
    ``1 - target``; returned as sparsities (more outliers, lower sparsity)."""
    lo, hi = min(ratios), max(ratios)
    scaled = [(r - lo) / (hi - lo) * 2 * lam if hi > lo else 0.0 for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [1.0 - (x - mean + 1.0 - target) for x in scaled]


def owl_genome(
    model: nn.Module, space: SearchSpace, budget: Budget, moments: InputMoments, target: float, rng: random.Random,
    *, m: float = 5.0, lam: float = 0.08,
) -> tuple[Genome, dict]:
    """The OWL allocation on ``space`` under ``budget``, and its per-layer outlier ratios."""
    ratios = outlier_ratios(model, moments, m=m)
    per_layer = layer_sparsities(ratios, target, lam)
    genome = from_sparsities(space, budget, [per_layer[u.layer] for u in space.units], rng)
    return genome, {"outlier_ratios": ratios, "layer_sparsities": per_layer}


def owl_start(ctx: StartContext, config) -> Genome:
    """The registered ``owl`` start (:data:`sparsearch.search.registry.STARTS`): OWL's allocation of
    the dense model's activations."""
    return owl_genome(ctx.model, ctx.space, ctx.budget, ctx.activations(), ctx.target, ctx.rng())[0]
