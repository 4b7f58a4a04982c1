"""Multi-objective search with NSGA-II (DEAP), with EMO-PMS's sub-network divide and conquer.

Objectives, both minimised: fitness at one schedule stage, and cost. Variation uses DEAP's
uniform crossover and uniform-integer mutation; offspring over the budget limit are repaired
(made sparser at random units); survivors are chosen by DEAP's ``selNSGA2``.

Global mode (``blocks=0``) evolves whole genomes under ``cost <= limit``; the result is the best
genome within the budget band ever evaluated, and the final population's first front.

Divide and conquer (``blocks=B``): the decoder layers are split into ``B`` contiguous blocks.
For each block in turn, NSGA-II searches only that block's units (the rest stay at the uniform
genome), over its whole cost range, giving a per-block Pareto front. The fronts are then joined
by a global impairment ranking: every block starts at its most expensive front point; while the
total cost is over the limit, the block whose next cheaper front point costs the least fitness
increase per unit of cost saved moves to it. The joined genome is scored on the full model.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from deap import base, tools

from sparsearch.search.config import require, setting
from sparsearch.search.engine import Engine
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


@dataclass(frozen=True)
class NSGA2Config:
    population: int = setting(24, "NSGA-II population")
    generations: int = setting(20, "generations (tyr: per round)")
    cxpb: float = setting(0.6, "NSGA-II crossover probability")
    indpb: float = setting(0.1, "NSGA-II per-unit mutation probability")
    stage: int = setting(0, "fitness stage that scores each trial or individual")
    blocks: int = setting(0, "NSGA-II divide and conquer: layer blocks (0 = off)")

    def __post_init__(self) -> None:
        require(self.population >= 4, "population", self.population, ">= 4")
        require(self.generations >= 0, "generations", self.generations, ">= 0")
        require(0 <= self.cxpb <= 1, "cxpb", self.cxpb, "within [0, 1]")
        require(0 < self.indpb <= 1, "indpb", self.indpb, "within (0, 1]")
        require(self.blocks >= 0, "blocks", self.blocks, ">= 0")
        require(self.stage >= 0, "stage", self.stage, ">= 0")


class NSGA2Engine(Engine):
    name = "nsga2"
    config: NSGA2Config

    # -- setup -------------------------------------------------------------------------------
    def initialize(self) -> None:
        self.base = self.start_genome()
        self.best_seen: tuple[list[int], float] | None = None
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
        self.joined: list[int] | None = None
        self.population = self._initial_population()

    def _initial_population(self) -> list[_Individual]:
        units = self.blocks[self.block]
        genomes = [self.base]
        while len(genomes) < self.config.population:
            g = list(self.base)
            for i in units:
                g[i] = self.rng.randrange(len(self.space.levels[i]))
            genomes.append(self._bounded(g, units))
        return self._evaluate(genomes)

    @property
    def _global(self) -> bool:
        return not self.config.blocks

    def _bounded(self, g: list[int], units: list[int]) -> Genome:
        frozen = [i for i in range(len(g)) if i not in set(units)]
        if self._global:
            return self.budget.repair(g, self.rng, frozen=frozen, fill=False)
        return tuple(g)

    def _evaluate(self, genomes: list[Genome]) -> list[_Individual]:
        scores = self.fitness.evaluate(genomes, self.config.stage)
        out = []
        for g, s in zip(genomes, scores):
            out.append(_Individual(g, (s, self.budget.cost(g))))
            if self.budget.feasible(g) and (self.best_seen is None or s < self.best_seen[1]):
                self.best_seen = (list(g), s)
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
        self.joined = list(self._join())
        score = self._evaluate([tuple(self.joined)])[0].fitness.values[0]
        return {"joined": True, "joined_fitness": score}

    def _generation(self, units: list[int]) -> None:
        low = [0] * len(units)
        up = [len(self.space.levels[i]) - 1 for i in units]
        with _deap_random(self.rng):
            parents = [list(self.population[random.randrange(len(self.population))]) for _ in range(self.config.population)]
            children = []
            for a, b in zip(parents[::2], parents[1::2]):
                sa, sb = [a[i] for i in units], [b[i] for i in units]
                if random.random() < self.config.cxpb:
                    tools.cxUniform(sa, sb, 0.5)
                tools.mutUniformInt(sa, low, up, self.config.indpb)
                tools.mutUniformInt(sb, low, up, self.config.indpb)
                for p, s in ((a, sa), (b, sb)):
                    for i, v in zip(units, s):
                        p[i] = v
                    children.append(p)
        offspring = self._evaluate([self._bounded(c, units) for c in children])
        with _deap_random(self.rng):
            self.population = tools.selNSGA2(self.population + offspring, self.config.population)

    def _front(self) -> list[dict]:
        front = tools.sortNondominated(self.population, len(self.population), first_front_only=True)[0]
        uniq = {tuple(ind): ind.fitness.values for ind in front}
        return sorted(({"genome": list(g), "fitness": v[0], "cost": v[1]} for g, v in uniq.items()),
                      key=lambda p: p["cost"])

    def _join(self) -> Genome:
        """Global impairment ranking over the per-block fronts (see the module docstring)."""
        g = list(self.base)
        pos = [len(f) - 1 for f in self.fronts]  # each block at its most expensive point

        def apply(b: int) -> None:
            point = self.fronts[b][pos[b]]["genome"]
            for i in self.blocks[b]:
                g[i] = point[i]

        for b in range(len(self.fronts)):
            apply(b)
        while self.budget.cost(tuple(g)) > self.budget.limit + 1e-9:
            best, rate = None, None
            for b, f in enumerate(self.fronts):
                if pos[b] == 0:
                    continue
                cur, nxt = f[pos[b]], f[pos[b] - 1]
                r = (nxt["fitness"] - cur["fitness"]) / max(cur["cost"] - nxt["cost"], 1e-12)
                if rate is None or r < rate:
                    best, rate = b, r
            if best is None:
                break
            pos[best] -= 1
            apply(best)
        return self.budget.repair(g, self.rng)

    @classmethod
    def planned_evaluations(cls, config: NSGA2Config, survivors, space) -> dict[int, int]:
        runs = max(1, min(config.blocks, len({u.layer for u in space.units}))) if config.blocks else 1
        return {config.stage: runs * config.population * (config.generations + 1) + (1 if config.blocks else 0)}

    # -- results and state ---------------------------------------------------------------------
    def best(self) -> tuple[Genome, float]:
        if self.best_seen is None:
            return self.base, float("inf")
        return tuple(self.best_seen[0]), self.best_seen[1]

    def pareto(self) -> list[dict[str, Any]]:
        return self._front() if self._global else [p for f in self.fronts for p in f]

    def get_state(self) -> dict[str, Any]:
        return {
            "base": list(self.base), "blocks": self.blocks, "block": self.block, "block_gen": self.block_gen,
            "fronts": self.fronts, "joined": self.joined, "best_seen": self.best_seen,
            "population": [{"genome": list(i), "values": list(i.fitness.values)} for i in self.population],
        }

    def set_state(self, s: dict[str, Any]) -> None:
        self.base = tuple(s["base"])
        self.blocks, self.block, self.block_gen = s["blocks"], s["block"], s["block_gen"]
        self.fronts, self.joined = s["fronts"], s["joined"]
        self.best_seen = tuple(s["best_seen"]) if s["best_seen"] else None
        self.population = [_Individual(p["genome"], p["values"]) for p in s["population"]]
