"""Týr-the-Pruner's coarse-to-fine rounds.

Round 0 searches the coarse supernet (ladder step ``first_step``, default 12.5%). Each later round
halves the step (6.25%, 3.125%, 1.5625%), rebuilds every unit's ladder as ``levels`` sparsities
centred on that unit's sparsity in the previous round's best genome (plus the dense and removed
levels, which cost nothing to store), asks the caller to build that supernet and its fitness, and
searches again with evolution (:func:`~sparsearch.search.evolution.evolve_generation`) starting from the
previous best. The supernet rebuild is injected (``rebuild``), so this module needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.search.fitness import Fitness
from sparsearch.base.settings import require, setting
from sparsearch.search.engine import Engine
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine, evolve_generation
from sparsearch.search.space import Genome, Ladder, SearchSpace

Rebuild = Callable[[int, dict[str, Ladder]], tuple[SearchSpace, Fitness]]


def centred_ladder(centre: float, step: float, levels: int = 9) -> Ladder:
    """``levels`` sparsities ``step`` apart around ``centre`` (shifted to stay within [0, 1]),
    plus 0 and 1."""
    lo = centre - (levels // 2) * step
    lo = min(max(lo, 0.0), max(0.0, 1.0 - (levels - 1) * step))
    points = {round(min(max(lo + k * step, 0.0), 1.0), 8) for k in range(levels)}
    return Ladder(tuple(sorted(points | {0.0, 1.0})))


@dataclass(frozen=True)
class TyrConfig(EvolutionConfig):
    """Evolution's settings (per round) and the rounds'."""

    rounds: int = setting(4, "Týr coarse-to-fine rounds")
    first_step: float = setting(0.125, "Týr: ladder step of round 0 (halved every round)")
    levels: int = setting(9, "Týr: levels of each unit's centred ladder in later rounds")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rounds >= 1, "rounds", self.rounds, ">= 1")
        require(0 < self.first_step <= 0.5, "first_step", self.first_step, "within (0, 0.5]")
        require(self.levels >= 2, "levels", self.levels, ">= 2")

    def step(self, round_index: int) -> float:
        return self.first_step / 2**round_index


class TyrEngine(Engine):
    """``space``/``budget``/``fitness`` given to the constructor are round 0's (the coarse supernet);
    ``rebuild(round, ladders)`` returns a later round's space and fitness, ``make_budget(space)``
    its budget."""

    name = "tyr"
    config: TyrConfig
    chooses_on_validation = False  # its rounds' genomes index different supernets

    def __init__(self, space, budget, fitness, config, *, rebuild: Rebuild,
                 make_budget: Callable[[SearchSpace], Budget], **kwargs):
        super().__init__(space, budget, fitness, config, **kwargs)
        self.rebuild = rebuild
        self.make_budget = make_budget
        self.round = 0
        self.generation = 0
        self.centres: dict[str, float] | None = None

    def initialize(self) -> None:
        self.parent = self.start_genome()
        self.parent_score = self.fitness.evaluate([self.parent], self.final_stage)[0]
        self.sample = 0

    def done(self) -> bool:
        return self.round == self.config.rounds - 1 and self.generation >= self.config.generations

    def step(self) -> dict[str, Any]:
        if self.generation < self.config.generations:
            self.sample = self.step_index + 1 if self.config.fresh_data else 0
            self.parent, self.parent_score, record = evolve_generation(
                self.parent, self.parent_score, self.fitness, self.budget, self.rng, self.config, self.sample
            )
            self.generation += 1
            return {"round": self.round, "generation": self.generation, **record}
        # round boundary: refine the ladders around the best genome and start from it
        self.centres = {u.name: lv[g].sparsity for u, lv, g in zip(self.space.units, self.space.levels, self.parent)}
        self._enter_round(self.round + 1)
        self.parent = self.budget.repair(self._nearest(self.centres), self.rng)
        self.parent_score = self.fitness.evaluate([self.parent], self.final_stage)[0]
        self.sample = 0
        return {"round": self.round, "generation": 0, "step_size": self.config.step(self.round),
                "parent_fitness": self.parent_score}

    def _enter_round(self, r: int) -> None:
        ladders = {name: centred_ladder(c, self.config.step(r), self.config.levels) for name, c in self.centres.items()}
        space, fitness = self.rebuild(r, ladders)
        self.space, self.budget = space, self.make_budget(space)
        self.fitness = CachedFitness(fitness, self.files, space=f"round{r}")
        self.round, self.generation = r, 0

    def _nearest(self, centres: dict[str, float]) -> Genome:
        return tuple(
            min(range(len(lv)), key=lambda i: abs(lv[i].sparsity - centres[u.name]))
            for u, lv in zip(self.space.units, self.space.levels)
        )

    def finish(self) -> None:
        if self.sample:  # the result's fitness on the reference data
            self.parent_score = self.fitness.evaluate([self.parent], self.final_stage)[0]
            self.sample = 0

    def best(self) -> tuple[Genome, float]:
        return self.parent, self.parent_score

    @classmethod
    def planned_evaluations(cls, config: TyrConfig, survivors, space) -> dict[int, int]:
        per_round = EvolutionEngine.planned_evaluations(config, survivors, space)  # its first parent included
        return {s: n * config.rounds for s, n in per_round.items()}

    def get_state(self) -> dict[str, Any]:
        return {"round": self.round, "generation": self.generation, "centres": self.centres,
                "parent": list(self.parent), "parent_score": self.parent_score, "sample": self.sample}

    def set_state(self, s: dict[str, Any]) -> None:
        if not isinstance(s["round"], int) or isinstance(s["round"], bool) or s["round"] < 0:
            raise ValueError(f"round {s['round']!r} is not a round number")  # it names the round's folder
        self.centres = s["centres"]
        if s["round"] > 0:
            self._enter_round(s["round"])
        self.round, self.generation = s["round"], s["generation"]
        self.parent, self.parent_score, self.sample = tuple(s["parent"]), s["parent_score"], s.get("sample", 0)
