"""Multi-objective search with NSGA-II (DEAP), with EMO-PMS's sub-network divide and conquer.

Objectives, both minimised: fitness at one schedule stage, and cost. Parents are chosen by DEAP's
crowded binary tournament (``selTournamentDCD``, on the ranks and crowding distances that
``selNSGA2`` assigns); variation is DEAP's uniform crossover and a one-level step per mutated
unit (levels are ordered, so a neighbouring level is the small change); survivors are chosen by
``selNSGA2``.

Global mode (``blocks=0``) evolves whole genomes, each repaired into the budget band, so every
evaluation is spent where the budget is; the front trades fitness against cost inside the band.

Divide and conquer (``blocks=B``): the decoder layers are split into ``B`` contiguous blocks.
For each block in turn, NSGA-II searches only that block's units (the rest stay at the start
genome) within a cost window around the block's start cost (``window``), giving a per-block
Pareto front where the join will need it. The fronts are
joined as EMO-PMS's global impairment ranking does, but exactly: one front point per block, the
sum of the points' fitness increases over the start minimal and the total cost in the budget
band (the multiple-choice knapsack of :func:`~sparsearch.search.mckp.choose`). The joined
genome is the result; joins under lower limits give whole genomes at lower costs.

At the end the candidates (global: the final population's first front and the best feasible
genomes seen; divide and conquer: the joined genomes)
are scored on the last fitness stage: the result is the best feasible one, and the reported
front is the non-dominated set of (last-stage fitness, cost), every point within the budget.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from deap import base, tools

from sparsearch.search.budget import Budget
from sparsearch.base.settings import require, setting
from sparsearch.search.engine import Engine
from sparsearch.search.mckp import choose
from sparsearch.search.space import Genome


class _Fitness(base.Fitness):
    weights = (-1.0, -1.0)


class _Individual(list):
    """A genome as DEAP wants it: a list with a ``fitness`` (plain lists cross process borders)."""

    def __init__(self, genes, values=None):
        super().__init__(genes)
        self.fitness = _Fitness()
        if values is not None:
            self.fitness.values = tuple(values)


@contextmanager
def _deap_random(rng: random.Random) -> Iterator[None]:
    """DEAP's operators draw from the global ``random``; run them on the engine's own stream."""
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


def mut_level_step(genes: list[int], up: Sequence[int], indpb: float) -> None:
    """Move each gene one level up or down (within ``0..up[i]``) with probability ``indpb``
    (draws from the global ``random``, as DEAP's operators do)."""
    for i, top in enumerate(up):
        if random.random() < indpb:
            step = random.choice((-1, 1)) if 0 < genes[i] < top else (1 if genes[i] == 0 else -1)
            genes[i] = min(max(genes[i] + step, 0), top)


def non_dominated(points: list[dict]) -> list[dict]:
    """The points no other point dominates on (fitness, cost), sorted by cost."""
    keep = [p for p in points if not any(
        q["fitness"] <= p["fitness"] and q["cost"] <= p["cost"] and (q["fitness"], q["cost"]) != (p["fitness"], p["cost"])
        for q in points)]
    unique = {tuple(p["genome"]): p for p in keep}
    return sorted(unique.values(), key=lambda p: (p["cost"], p["fitness"]))


@dataclass(frozen=True)
class NSGA2Config:
    population: int = setting(24, "NSGA-II population (a multiple of 4, for the crowded tournament)")
    generations: int = setting(20, "generations (tyr: per round)")
    cxpb: float = setting(0.6, "NSGA-II crossover probability")
    indpb: float = setting(0.1, "NSGA-II per-unit mutation probability")
    stage: int = setting(0, "fitness stage that scores each trial or individual")
    blocks: int = setting(0, "NSGA-II divide and conquer: layer blocks (0 = off)")
    window: float = setting(0.15, "NSGA-II divide and conquer: each block's cost window around its start, as a "
                            "fraction of the block's dense cost")
    finalists: int = setting(4, "best feasible genomes re-scored on the final stage")

    def __post_init__(self) -> None:
        require(self.population >= 4 and self.population % 4 == 0, "population", self.population,
                "a multiple of 4, >= 4")
        require(self.generations >= 0, "generations", self.generations, ">= 0")
        require(0 <= self.cxpb <= 1, "cxpb", self.cxpb, "within [0, 1]")
        require(0 < self.indpb <= 1, "indpb", self.indpb, "within (0, 1]")
        require(self.blocks >= 0, "blocks", self.blocks, ">= 0")
        require(0 < self.window <= 1, "window", self.window, "within (0, 1]")
        require(self.stage >= 0, "stage", self.stage, ">= 0")
        require(self.finalists >= 0, "finalists", self.finalists, ">= 0")


class NSGA2Engine(Engine):
    name = "nsga2"
    config: NSGA2Config
    patience_counts_steps = False  # its steps build a front block by block: a step's best is not the run's
    below = 8  # genomes of the impairment ranking scored below the limit (divide and conquer)

    # -- setup -------------------------------------------------------------------------------
    def initialize(self) -> None:
        self.base = self.start_genome()
        self.seen: dict[tuple, float] = {}  # the best feasible genomes -> stage score (the finalists)
        layers = sorted({u.layer for u in self.space.units})
        if self.config.blocks:
            b = min(self.config.blocks, len(layers))
            chunks = [layers[i * len(layers) // b : (i + 1) * len(layers) // b] for i in range(b)]
            self.blocks = [[i for i, u in enumerate(self.space.units) if u.layer in set(c)] for c in chunks]
        else:
            self.blocks = [list(range(len(self.space.units)))]
        self.block = 0
        self.block_gen = 0
        self.fronts: list[list[dict]] = []
        self.joined: list[list[int]] | None = None
        self.population = self._initial_population()
        self.result: dict | None = None

    @property
    def _global(self) -> bool:
        return not self.config.blocks

    def _initial_population(self) -> list[_Individual]:
        units = self.blocks[self.block]
        genomes = [self.base]
        while len(genomes) < self.config.population:
            g = list(self.base)
            for i in units:
                g[i] = self.rng.randrange(len(self.space.levels[i]))
            genomes.append(self._bounded(g, units))
        return self._evaluate(genomes)

    def _bounded(self, g: list[int], units: list[int]) -> Genome:
        """Into the budget band (global mode), or the block's cost window (divide and conquer),
        moving these ``units`` only."""
        frozen = [i for i in range(len(g)) if i not in set(units)]
        return self._band(units).repair(g, self.rng, frozen=frozen)

    def _band(self, units: list[int]) -> Budget:
        """Global mode: the budget. A block: its cost at the start genome, +- ``window`` of the
        block's dense cost (the total cost moves with the block's units only)."""
        if self._global:
            return self.budget
        table = self.budget.model.table
        base = self.budget.cost(self.base)
        width = self.config.window * sum(table[i][0] for i in units)
        hi = min(base + width, self.budget.model.dense())
        return Budget(self.budget.model, hi, hi - max(base - width, self.budget.model.minimum()))

    def _evaluate(self, genomes: list[Genome]) -> list[_Individual]:
        scores = self.fitness.evaluate(genomes, self.config.stage)
        out = []
        for g, s in zip(genomes, scores):
            out.append(_Individual(g, (s, self.budget.cost(g))))
            if self.budget.feasible(g):
                self.seen[tuple(g)] = s
        keep = sorted(self.seen, key=lambda x: (self.seen[x], x))[: max(self.config.finalists, 1)]
        self.seen = {g: self.seen[g] for g in keep}
        return out

    # -- steps -------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.joined is not None or (self._global and self.block_gen >= self.config.generations)

    def step(self) -> dict[str, Any]:
        units = self.blocks[self.block]
        if self.block_gen < self.config.generations:
            self._generation(units)
            self.block_gen += 1
            record = {"block": self.block, "generation": self.block_gen, "front": len(self._front())}
            if not self._global and self.block_gen == self.config.generations:
                self.fronts.append(self._front())
                if self.block + 1 < len(self.blocks):
                    self.block += 1
                    self.block_gen = 0
                    self.population = self._initial_population()
            return record
        self.joined = [list(g) for g in self._join()]
        score = self._evaluate([tuple(self.joined[0])])[0].fitness.values[0]
        return {"joined": True, "joined_fitness": score}

    def _generation(self, units: list[int]) -> None:
        up = [len(self.space.levels[i]) - 1 for i in units]
        with _deap_random(self.rng):
            tools.selNSGA2(self.population, len(self.population))  # ranks and crowding distances
            parents = tools.selTournamentDCD(self.population, len(self.population))
            children = []
            for a, b in zip(parents[::2], parents[1::2]):
                sa, sb = [a[i] for i in units], [b[i] for i in units]
                if random.random() < self.config.cxpb:
                    tools.cxUniform(sa, sb, 0.5)
                mut_level_step(sa, up, self.config.indpb)
                mut_level_step(sb, up, self.config.indpb)
                for p, s in ((a, sa), (b, sb)):
                    child = list(p)
                    for i, v in zip(units, s):
                        child[i] = v
                    children.append(child)
        offspring = self._evaluate([self._bounded(c, units) for c in children])
        with _deap_random(self.rng):
            self.population = tools.selNSGA2(self.population + offspring, self.config.population)

    def _front(self) -> list[dict]:
        front = tools.sortNondominated(self.population, len(self.population), first_front_only=True)[0]
        uniq = {tuple(ind): ind.fitness.values for ind in front}
        return sorted(({"genome": list(g), "fitness": v[0], "cost": v[1]} for g, v in uniq.items()),
                      key=lambda p: p["cost"])

    def _join(self) -> list[Genome]:
        """The blocks' fronts joined (see the module docstring): the joined genome in the band,
        then joins under lower limits (2%, 4%, ... of the dense cost below), for the front."""
        base_score = self.fitness.evaluate([self.base], self.config.stage)[0]
        table = self.budget.model.table
        outside = [sum(table[i][self.base[i]] for i in range(len(self.base)) if i not in set(units))
                   for units in self.blocks]
        values = [[p["fitness"] - base_score for p in f] for f in self.fronts]
        costs = [[p["cost"] - outside[b] for p in f] for b, f in enumerate(self.fronts)]

        def joined(low: float, high: float) -> Genome | None:
            picks = choose(values, costs, low, high)
            if picks is None:
                return None
            g = list(self.base)
            for b, k in enumerate(picks):
                for i in self.blocks[b]:
                    g[i] = self.fronts[b][k]["genome"][i]
            return tuple(g)

        limit, tol, dense = self.budget.limit, self.budget.tolerance, self.budget.model.dense()
        first = joined(limit - tol, limit) or joined(-float("inf"), limit) or self.base
        path = [self.budget.repair(first, self.rng)]
        for k in range(1, self.below + 1):
            g = joined(-float("inf"), limit - 0.02 * k * dense)
            if g is not None and g not in path:
                path.append(g)
        return path

    def finish(self) -> None:
        """Score the candidates on the last stage; the best feasible one is the result and the
        non-dominated ones within the budget are the front."""
        if self._global:
            by_stage = sorted(self.seen, key=lambda g: (self.seen[g], g))[: self.config.finalists]
            candidates = list(dict.fromkeys([tuple(p["genome"]) for p in self._front()] + by_stage))
        else:
            candidates = [tuple(g) for g in self.joined]
        candidates = [g for g in candidates if self.budget.within_limit(g)]
        scores = self.fitness.evaluate(candidates, self.final_stage)
        points = [{"genome": list(g), "fitness": s, "cost": self.budget.cost(g)} for g, s in zip(candidates, scores)]
        feasible = [p for p in points if self.budget.feasible(tuple(p["genome"]))]
        best = min(feasible, key=lambda p: (p["fitness"], p["genome"]), default=None)
        self.result = {"best": best, "front": non_dominated(points)}
        if best is not None:
            self.log(f"nsga2: {len(points)} candidates scored on stage {self.final_stage}; best {best['fitness']:.5f}")

    # -- results and state ---------------------------------------------------------------------
    def best(self) -> tuple[Genome, float]:
        if self.result and self.result["best"]:
            return tuple(self.result["best"]["genome"]), self.result["best"]["fitness"]
        if not self.seen:
            return self.base, float("inf")
        g = min(self.seen, key=lambda x: (self.seen[x], x))
        return g, self.seen[g]

    def pareto(self) -> list[dict[str, Any]]:
        return self.result["front"] if self.result else []

    @classmethod
    def planned_steps(cls, config: NSGA2Config) -> int:
        return max(1, config.blocks) * config.generations + 1  # every block's generations, and the join

    @classmethod
    def planned_evaluations(cls, config: NSGA2Config, survivors, space) -> dict[int, int]:
        runs = max(1, min(config.blocks, len({u.layer for u in space.units}))) if config.blocks else 1
        final = len(survivors) - 1
        counts = {config.stage: runs * config.population * (config.generations + 1) + (1 if config.blocks else 0)}
        finalists = cls.below + 1 if config.blocks else config.population + config.finalists
        counts[final] = counts.get(final, 0) + finalists
        return counts

    def get_state(self) -> dict[str, Any]:
        return {
            "base": list(self.base), "blocks": self.blocks, "block": self.block, "block_gen": self.block_gen,
            "fronts": self.fronts, "joined": self.joined, "seen": [[list(g), s] for g, s in self.seen.items()],
            "population": [{"genome": list(i), "values": list(i.fitness.values)} for i in self.population],
        }

    def set_state(self, s: dict[str, Any]) -> None:
        self.base = tuple(s["base"])
        self.blocks, self.block, self.block_gen = s["blocks"], s["block"], s["block_gen"]
        self.fronts, self.joined = s["fronts"], s["joined"]
        self.seen = {tuple(g): v for g, v in s["seen"]}
        self.population = [_Individual(p["genome"], p["values"]) for p in s["population"]]
        self.result = None
