"""Probe and exact allocation (NVIDIA Puzzle): replace-one-unit scores and a multiple-choice knapsack.

Every unit is scored at every level alone: the dense model with only that unit at that level,
scored by the run's fitness (KL to the dense model) on the reference data of one fitness stage.
If a genome's damage were the sum of its units' damages, the best genome under the budget would
be the solution of a multiple-choice knapsack: one level per unit, the sum of the probed damages
minimal, the cost within the budget band. It is solved exactly as a mixed-integer program
(``scipy.optimize.milp``, HiGHS) for any cost model (parameters, FLOPs, latency).

**Why this is a proxy, and where it fails.** KL to the dense model is not additive over units.
A unit's probe sees dense inputs, but in a pruned genome every later unit sees the errors of the
earlier ones: errors compound through the residual stream, so at high sparsity (many units
pruned together) the sum underestimates the damage, and units late in the network are probed on
inputs they will not see. Interactions can also cancel (a pruned MLP can partly repair a pruned
attention block before it), which no sum captures. The allocation is exact for separable damage
and a good start otherwise: ``--init knapsack`` starts evolution (or NSGA-II, TPE) from it, and
they score whole genomes. The probes cost ``units x (levels - 1) + 1`` evaluations at the probe
stage, independent of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.search.config import require, setting
from sparsearch.search.errors import SparsearchError
from sparsearch.search.mckp import choose
from sparsearch.search.oneshot import OneShotEngine
from sparsearch.search.space import Genome, SearchSpace


@dataclass(frozen=True)
class KnapsackConfig:
    stage: int = setting(0, "fitness stage that scores each trial or individual")

    def __post_init__(self) -> None:
        require(self.stage >= 0, "stage", self.stage, ">= 0")


def probes(space: SearchSpace) -> list[Genome]:
    """The dense genome, then every unit at every non-dense level alone."""
    out = [space.dense]
    for u, levels in enumerate(space.levels):
        for level in range(1, len(levels)):
            g = list(space.dense)
            g[u] = level
            out.append(tuple(g))
    return out


def damages(space: SearchSpace, scores: list[float]) -> list[list[float]]:
    """Per unit and level, the probe's score above the dense genome's (``scores`` in
    :func:`probes` order)."""
    dense, rest = scores[0], iter(scores[1:])
    return [[0.0] + [next(rest) - dense for _ in range(len(levels) - 1)] for levels in space.levels]


def solve(space: SearchSpace, budget: Budget, damage: list[list[float]]) -> Genome:
    """The genome minimising the sum of ``damage`` with its cost in the budget band (exact)."""
    picks = choose(damage, [list(t) for t in budget.model.table], budget.limit - budget.tolerance, budget.limit)
    if picks is None:
        raise SparsearchError("no genome meets the budget band")
    return tuple(picks)


@dataclass(frozen=True)
class KnapsackStart:
    """A start computed by probing through the run's cached fitness (so a resumed run reuses the
    probes): the knapsack allocation on fitness stage ``stage``."""

    stage: int = 0

    def __call__(self, space: SearchSpace, budget: Budget, fitness: CachedFitness) -> Genome:
        stage = min(self.stage, len(fitness.survivors) - 1)
        scores = fitness.evaluate(probes(space), stage)
        return solve(space, budget, damages(space, scores))


class KnapsackAllocation(OneShotEngine):
    """Probes every unit at every level, then the exact knapsack allocation, scored on the final stage."""

    name = "knapsack"
    probes_fitness = True
    config: KnapsackConfig

    def __init__(self, space, budget, fitness, config: KnapsackConfig, *, starts=None, **kwargs):
        super().__init__(space, budget, fitness, config, starts=starts or {"knapsack": KnapsackStart(config.stage)},
                         **kwargs)

    @classmethod
    def planned_evaluations(cls, config: KnapsackConfig, survivors, space) -> dict[int, int]:
        stage, final = min(config.stage, len(survivors) - 1), len(survivors) - 1
        counts = {stage: len(probes(space))}
        counts[final] = counts.get(final, 0) + 1
        return counts
