"""A feasible parametrisation of the budget: per-unit sparsity preferences and one common shift.

A sampler that draws every unit's level independently (TPE, random search) almost never lands in
a 1% cost band in tens of dimensions, and repairing its draw by random moves scores a genome the
sampler did not propose, so its model learns slowly. Here the sampler proposes instead a
preferred sparsity ``p_u`` in [0, 1] per unit, and :func:`genome_of_preferences` maps any ``p`` to
a genome that spends the budget:

1. every unit goes to the level nearest ``p_u + tau`` (clamped to [0, 1]), with the one shift
   ``tau`` shared by all units: the smallest at which the cost is within the limit (found exactly
   among the finitely many shifts where some unit changes level);
2. while the cost is below the band, the unit furthest sparser than its target ``p_u + tau`` is
   made one level denser, if that stays within the limit.

What the sampler controls is how much sparser each unit is than the others; the budget sets the
overall level. The map is deterministic, so the sampled ``p`` and its score describe one genome,
and a model of scores over ``p`` (TPE's) models exactly what was scored. Costs must not grow with
the level (sparser is cheaper), as for parameters and FLOPs; a genome still outside the band
(a non-monotone latency table, a band no genome near ``p`` reaches) is the caller's to repair.
"""

from __future__ import annotations

import bisect
from typing import Sequence

from sparsearch.search.budget import Budget
from sparsearch.search.space import Genome, SearchSpace


def preferences_of(space: SearchSpace, genome: Genome) -> list[float]:
    """The preferences whose unshifted levels are ``genome``: each unit's level sparsity."""
    return [lv[g].sparsity for lv, g in zip(space.levels, genome)]


def genome_of_preferences(space: SearchSpace, budget: Budget, preferences: Sequence[float]) -> Genome:
    """The genome of per-unit sparsity ``preferences`` under ``budget`` (see the module docstring)."""
    if len(preferences) != len(space.units):
        raise ValueError(f"{len(preferences)} preferences for {len(space.units)} units")
    # a unit is at level i when its target lies between the midpoints below and above level i
    mids = [[(a.sparsity + b.sparsity) / 2 for a, b in zip(lv, lv[1:])] for lv in space.levels]

    def at(tau: float) -> list[int]:
        return [bisect.bisect_right(m, min(1.0, max(0.0, p + tau))) for m, p in zip(mids, preferences)]

    # the cost falls (weakly) as tau grows and changes only where some unit's target crosses a
    # midpoint; below the first such shift every unit is dense, from the last one on all sparsest
    shifts = sorted({m - p for ms, p in zip(mids, preferences) for m in ms})
    shifts.insert(0, shifts[0] - 1.0 if shifts else 0.0)
    lo, hi = 0, len(shifts) - 1  # the first shift whose genome is within the limit (else the last)
    while lo < hi:
        mid = (lo + hi) // 2
        if budget.within_limit(tuple(at(shifts[mid]))):
            hi = mid
        else:
            lo = mid + 1
    tau = shifts[lo]
    genome = at(tau)
    table = budget.model.table
    cost = budget.cost(tuple(genome))
    band = budget.limit - budget.tolerance - 1e-9
    targets = [min(1.0, max(0.0, p + tau)) for p in preferences]
    while cost < band:
        options = [(lv[g].sparsity - t, -i) for i, (lv, g, t) in enumerate(zip(space.levels, genome, targets))
                   if g > 0 and cost + table[i][g - 1] - table[i][g] <= budget.limit + 1e-9]
        if not options:
            break
        i = -max(options)[1]
        cost += table[i][genome[i] - 1] - table[i][genome[i]]
        genome[i] -= 1
    return tuple(genome)
