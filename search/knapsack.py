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
stage, independent of the budget; scored from the dense hidden states entering each unit
(:mod:`sparsearch.fitness.prefix`), a probe runs only the layers from its unit on.

**Rounds around the allocation** (``rounds``) take the compounding into account locally: every
unit's levels within ``radius`` of the current allocation are scored with the rest of the network
at that allocation (not dense), the knapsack is solved again on those context-dependent damages
(levels beyond the radius excluded), and the new allocation replaces the old one only if it
scores better on the probe stage; otherwise the radius is halved (a trust region), and the rounds
end at radius 0, after ``rounds`` rounds, or when the allocation stops changing. Each accepted
round's allocation is a start of its own (``knapsack-r1``, ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from typing import Callable

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.base.settings import require, setting
from sparsearch.base.errors import SparsearchError
from sparsearch.search.mckp import choose
from sparsearch.search.oneshot import OneShotEngine
from sparsearch.search.space import Genome, SearchSpace


@dataclass(frozen=True)
class KnapsackConfig:
    probe_stage: int = setting(0, "knapsack: fitness stage its probes are scored on (-1: the last)")
    knapsack_rounds: int = setting(0, "knapsack: rounds of probes around the allocation, solved again on their "
                                   "context-dependent damages")
    knapsack_radius: int = setting(2, "knapsack: levels on either side of the allocation that a round probes")

    def __post_init__(self) -> None:
        require(self.probe_stage >= -1, "probe_stage", self.probe_stage, ">= -1 (the last stage)")
        require(0 <= self.knapsack_rounds <= 100, "knapsack_rounds", self.knapsack_rounds, "within [0, 100]")
        require(self.knapsack_radius >= 1, "knapsack_radius", self.knapsack_radius, ">= 1")


def _stage(stage: int, stages: int) -> int:
    """A probe stage index of a schedule of ``stages`` stages: -1 (and any beyond) is the last."""
    return stages - 1 if stage < 0 else min(stage, stages - 1)


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


def probes_around(space: SearchSpace, genome: Genome, radius: int) -> list[Genome]:
    """``genome`` with one unit at another level within ``radius`` of its own, unit by unit."""
    out = []
    for u, levels in enumerate(space.levels):
        for level in range(max(0, genome[u] - radius), min(len(levels) - 1, genome[u] + radius) + 1):
            if level != genome[u]:
                g = list(genome)
                g[u] = level
                out.append(tuple(g))
    return out


def context_damages(space: SearchSpace, genome: Genome, around: list[Genome], base: float,
                    scores: list[float]) -> list[list[float]]:
    """Per unit and level, the score of ``genome`` with that unit at that level above ``base``
    (``genome``'s own score); levels not among the probes ``around`` are excluded (infinite)."""
    damage = [[math.inf] * len(levels) for levels in space.levels]
    for u in range(len(space.levels)):
        damage[u][genome[u]] = 0.0
    for g, score in zip(around, scores):
        u = next(i for i, (a, b) in enumerate(zip(g, genome)) if a != b)
        damage[u][g[u]] = score - base
    return damage


@dataclass(frozen=True)
class KnapsackStart:
    """A start computed by probing through the run's cached fitness (so a resumed run reuses the
    probes): the knapsack allocation on fitness stage ``stage`` (-1: the last), then up to ``rounds`` rounds around
    it (see the module docstring). Returns the allocations by name: ``knapsack``, then each accepted
    round's (``knapsack-r1``, ...)."""

    stage: int = 0
    rounds: int = 0
    radius: int = 2
    progress: bool = False  # a progress bar over the probes
    log: Callable[[str], None] | None = None  # one summary line per pass of probes

    @classmethod
    def of(cls, config: "KnapsackConfig", *, progress: bool = False,
           log: Callable[[str], None] | None = None) -> "KnapsackStart":
        return cls(config.probe_stage, config.knapsack_rounds, config.knapsack_radius, progress, log)

    def _probe(self, fitness: CachedFitness, genomes: list[Genome], stage: int, desc: str) -> list[float]:
        """Score ``genomes`` on ``stage`` in one batch (they share the hidden states before the unit
        each changes), with a progress bar and one summary line."""
        started = time.perf_counter()
        cached = sum((g, stage, 0) in fitness.cache for g in dict.fromkeys(genomes))
        with tqdm(total=len(genomes), initial=cached, desc=desc, unit="probe", disable=not self.progress) as bar:
            scores = fitness.evaluate(genomes, stage, on_score=lambda: bar.update(1))
        if self.log is not None:
            wall = time.perf_counter() - started
            fresh = len(genomes) - cached
            self.log(f"{desc}: {len(genomes)} probes on fitness stage {stage}"
                     f"{f' ({cached} cached)' if cached else ''} in {wall:.0f} s"
                     + (f", {wall / fresh:.2f} s per probe" if fresh else ""))
        return scores

    def __call__(self, space: SearchSpace, budget: Budget, fitness: CachedFitness) -> dict[str, Genome]:
        stage = _stage(self.stage, len(fitness.survivors))
        scores = self._probe(fitness, probes(space), stage, "knapsack probes")
        genome = solve(space, budget, damages(space, scores))
        out = {"knapsack": genome}
        radius, score = self.radius, None
        for r in range(1, self.rounds + 1):
            around = probes_around(space, genome, radius)
            score, *rest = self._probe(fitness, [genome, *around], stage, f"knapsack round {r}")
            new = solve(space, budget, context_damages(space, genome, around, score, rest))
            if new == genome:
                break
            if fitness.evaluate([new], stage)[0] < score:
                genome = new
                out[f"knapsack-r{r}"] = genome
            else:
                radius //= 2
                if not radius:
                    break
        return out


class KnapsackAllocation(OneShotEngine):
    """Probes every unit at every level, then the exact knapsack allocation, scored on the final stage."""

    name = "knapsack"
    probes_fitness = True
    config: KnapsackConfig

    def __init__(self, space, budget, fitness, config: KnapsackConfig, *, starts=None, **kwargs):
        super().__init__(space, budget, fitness, config,
                         starts=starts or {"knapsack": KnapsackStart.of(config)},
                         **kwargs)

    @classmethod
    def planned_evaluations(cls, config: KnapsackConfig, survivors, space) -> dict[int, int]:
        stage, final = _stage(config.probe_stage, len(survivors)), len(survivors) - 1
        per_round = sum(min(2 * config.knapsack_radius, len(levels) - 1) for levels in space.levels) + 2
        counts = {stage: len(probes(space)) + config.knapsack_rounds * per_round}
        counts[final] = counts.get(final, 0) + 1 + config.knapsack_rounds
        return counts
