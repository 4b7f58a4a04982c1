"""Evolutionary search with staged selection (DarwinLM / EvoPress).

A (1 + lambda) scheme: the parent starts as the uniform genome (or a given start genome, e.g. the
best one-shot baseline); each generation makes ``offspring`` level-switch mutants of it, scores
them stage by stage on the fitness schedule (each stage keeps its ``survivors`` best for the next,
costlier stage), and the best finalist replaces the parent only if it beats the parent at the final
stage (elitism: the parent always reaches the final stage).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.search.config import require, setting
from sparsearch.search.engine import Engine
from sparsearch.search.mutation import level_switch
from sparsearch.search.space import Genome


@dataclass(frozen=True)
class EvolutionConfig:
    generations: int = setting(20, "generations (tyr: per round)")
    offspring: int = setting(8, "mutants per generation")
    max_flips: int = setting(3, "level switches per mutation, at most")

    def __post_init__(self) -> None:
        require(self.generations >= 0, "generations", self.generations, ">= 0")
        require(self.offspring >= 1, "offspring", self.offspring, ">= 1")
        require(self.max_flips >= 1, "max_flips", self.max_flips, ">= 1")


def evolve_generation(
    parent: Genome, parent_score: float, fitness: CachedFitness, budget: Budget, rng: random.Random, cfg: EvolutionConfig
) -> tuple[Genome, float, dict[str, Any]]:
    """One generation: mutate, select stage by stage, keep the parent unless beaten at the last stage."""
    final = len(fitness.survivors) - 1
    offspring = list(dict.fromkeys(level_switch(parent, budget, rng, max_flips=cfg.max_flips) for _ in range(cfg.offspring)))
    field = [g for g in offspring if g != parent]
    n_offspring = len(field)
    for stage in range(final):
        if not field:
            break
        scores = fitness.evaluate(field, stage)
        order = sorted(range(len(field)), key=lambda i: (scores[i], field[i]))
        field = [field[i] for i in order[: fitness.survivors[stage]]]
    scores = fitness.evaluate(field, final) if field else []
    winner = min(range(len(field)), key=lambda i: scores[i], default=None)
    improved = winner is not None and scores[winner] < parent_score  # ties keep the parent
    if improved:
        parent, parent_score = field[winner], scores[winner]
    return parent, parent_score, {"offspring": n_offspring, "improved": improved, "parent_fitness": parent_score}


def generation_evaluations(cfg: EvolutionConfig, survivors) -> dict[int, int]:
    """Evaluations per stage in one generation: every offspring at stage 0, then the survivors."""
    counts, n = {}, cfg.offspring
    for stage, kept in enumerate(survivors):
        counts[stage] = n
        n = min(n, kept)
    return counts


class EvolutionEngine(Engine):
    name = "evolution"
    config: EvolutionConfig

    def initialize(self) -> None:
        self.parent = self.start_genome()
        self.parent_score = self.fitness.evaluate([self.parent], self.final_stage)[0]

    def done(self) -> bool:
        return self.step_index >= self.config.generations

    def step(self) -> dict[str, Any]:
        self.parent, self.parent_score, record = evolve_generation(
            self.parent, self.parent_score, self.fitness, self.budget, self.rng, self.config
        )
        return {"generation": self.step_index + 1, **record}

    def best(self) -> tuple[Genome, float]:
        return self.parent, self.parent_score

    @classmethod
    def planned_evaluations(cls, config: EvolutionConfig, survivors, space) -> dict[int, int]:
        counts = generation_evaluations(config, survivors)
        counts = {s: n * config.generations for s, n in counts.items()}
        counts[len(survivors) - 1] += 1  # the first parent
        return counts

    def get_state(self) -> dict[str, Any]:
        return {"parent": list(self.parent), "parent_score": self.parent_score}

    def set_state(self, state: dict[str, Any]) -> None:
        self.parent = tuple(state["parent"])
        self.parent_score = state["parent_score"]
