"""One-shot allocations: a feasible genome from per-unit targets, without search.

Score-based baselines give, per unit, either a target sparsity (OWL's layer ratios) or a score per
prunable group (FLAP's heads and channels, ranked globally). These functions place such targets on
the supernet's ladders under the same :class:`~search.budget.Budget` the search engines use:

- :func:`from_sparsities` shifts every target by one common offset, found by bisection, so that the
  nearest levels spend the budget (the targets' shape is kept), then fills the band;
- :func:`from_scores` keeps, in every unit, the groups scoring above one global threshold, found
  by bisection over the scores, so that the nearest levels spend the budget, then fills the band.
"""

from __future__ import annotations

import bisect
import random
from typing import Sequence

from sparsearch.search.budget import Budget
from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Genome, SearchSpace


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def from_sparsities(space: SearchSpace, budget: Budget, sparsities: Sequence[float], rng: random.Random) -> Genome:
    """The nearest levels to ``sparsities + delta`` with the smallest common ``delta`` that meets the
    budget's limit, repaired up into its band."""
    if len(sparsities) != len(space.units):
        raise SparsearchError(f"{len(sparsities)} target sparsities for {len(space.units)} units")

    def at(delta: float) -> Genome:
        return space.nearest([_clip(s + delta) for s in sparsities])

    lo, hi = -1.0, 1.0  # at(-1) is dense, at(+1) removes every unit
    if budget.within_limit(at(lo)):
        hi = lo
    for _ in range(50):
        mid = (lo + hi) / 2
        if budget.within_limit(at(mid)):
            hi = mid
        else:
            lo = mid
    return budget.repair(at(hi), rng)


def from_scores(space: SearchSpace, budget: Budget, scores: Sequence[Sequence[float]], rng: random.Random) -> Genome:
    """Per unit, the level nearest to keeping the fraction of its groups scoring above a global
    threshold; the lowest threshold whose genome meets the budget's limit, repaired into its band."""
    if len(scores) != len(space.units) or any(len(s) == 0 for s in scores):
        raise SparsearchError(f"need a non-empty list of group scores for each of the {len(space.units)} units")
    ordered = [sorted(s) for s in scores]
    candidates = sorted({x for s in ordered for x in s})

    def at(k: int) -> Genome:
        """Keep the groups scoring at or above the k-th smallest distinct score."""
        tau = candidates[k] if k < len(candidates) else float("inf")
        kept = [(len(s) - bisect.bisect_left(s, tau)) / len(s) for s in ordered]
        return space.nearest([1.0 - f for f in kept])

    lo, hi = 0, len(candidates)  # at(0) keeps everything; at(len) removes everything
    if budget.within_limit(at(lo)):
        hi = lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if budget.within_limit(at(mid)):
            hi = mid
        else:
            lo = mid
    return budget.repair(at(hi), rng)
