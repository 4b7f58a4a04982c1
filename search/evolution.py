"""Evolutionary search with staged selection (DarwinLM / EvoPress).

A (1 + lambda) scheme: the parent starts as the uniform genome (or a given start, e.g. the best
one-shot allocation); each generation makes ``offspring`` distinct budget-exact level-switch
mutants of it (:mod:`sparsearch.search.mutation`), scores them stage by stage on the fitness
schedule (each stage keeps its ``survivors`` best for the next, costlier stage), and the best
finalist replaces the parent only if it beats the parent at the final stage.

With ``fresh_data`` (default), every generation scores on its own batches drawn from the fitness
token pool (``sample = generation``), and the parent is scored again on the final stage's
batches of that generation, so the parent and the finalists are compared on the same data and the
search does not fit one fixed set of tokens. The result's fitness is the parent's score on the
reference sample (0), comparable with every other engine's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.base.settings import require, require_choice, setting
from sparsearch.search.engine import Engine
from sparsearch.search.mutation import FLIP_DISTRIBUTIONS, level_switch
from sparsearch.search.space import Genome


@dataclass(frozen=True)
class EvolutionConfig:
    generations: int = setting(20, "generations (tyr: per round)")
    offspring: int = setting(8, "mutants per generation")
    max_flips: int = setting(3, "level switches per mutation, at most")
    flips: str = setting("evopress", "number of level switches: evopress (the smaller of two uniform draws on "
                         "1..max_flips) or uniform", choices=FLIP_DISTRIBUTIONS)
    fresh_data: bool = setting(True, "score each generation on fresh batches of the fitness pool, the parent "
                               "again with its offspring")

    def __post_init__(self) -> None:
        require(self.generations >= 0, "generations", self.generations, ">= 0")
        require(self.offspring >= 1, "offspring", self.offspring, ">= 1")
        require(self.max_flips >= 1, "max_flips", self.max_flips, ">= 1")
        require_choice("flips", self.flips, FLIP_DISTRIBUTIONS)


def mutants(parent: Genome, n: int, budget: Budget, rng: random.Random, cfg: EvolutionConfig) -> list[Genome]:
    """``n`` distinct mutants of ``parent`` (fewer only if the neighbourhood has fewer): a
    duplicate is drawn again, not dropped."""
    out: list[Genome] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        child = level_switch(parent, budget, rng, max_flips=cfg.max_flips, flips=cfg.flips)
        if child != parent and child not in out:
            out.append(child)
    return out


def evolve_generation(
    parent: Genome, parent_score: float, fitness: CachedFitness, budget: Budget, rng: random.Random,
    cfg: EvolutionConfig, sample: int = 0,
) -> tuple[Genome, float, dict[str, Any]]:
    """One generation on data ``sample``: mutate, select stage by stage, keep the parent unless a
    finalist beats it at the last stage. With a ``sample`` other than the parent's score's, the
    parent is scored on it too. Returns the parent, its score on ``sample``, and the record."""
    final = len(fitness.survivors) - 1
    field = mutants(parent, cfg.offspring, budget, rng, cfg)
    n_offspring = len(field)
    for stage in range(final):
        if not field:
            break
        scores = fitness.evaluate(field, stage, sample)
        order = sorted(range(len(field)), key=lambda i: (scores[i], field[i]))
        field = [field[i] for i in order[: fitness.survivors[stage]]]
    if sample:
        parent_score = fitness.evaluate([parent], final, sample)[0]  # the same final batches as the finalists
    scores = fitness.evaluate(field, final, sample) if field else []
    winner = min(range(len(field)), key=lambda i: scores[i], default=None)
    improved = winner is not None and scores[winner] < parent_score  # ties keep the parent
    if improved:
        parent, parent_score = field[winner], scores[winner]
    return parent, parent_score, {"offspring": n_offspring, "improved": improved, "parent_fitness": parent_score}


def generation_evaluations(cfg: EvolutionConfig, survivors) -> dict[int, int]:
    """Evaluations per stage in one generation: every offspring at stage 0, then the survivors,
    and with fresh data the parent again at the last stage."""
    counts, n = {}, cfg.offspring
    for stage, kept in enumerate(survivors):
        counts[stage] = n
        n = min(n, kept)
    counts[len(survivors) - 1] += 1 if cfg.fresh_data else 0
    return counts


class EvolutionEngine(Engine):
    name = "evolution"
    config: EvolutionConfig

    def initialize(self) -> None:
        self.parent = self.start_genome()
        self.parent_score = self.fitness.evaluate([self.parent], self.final_stage)[0]
        self.sample = 0  # the data the parent's score is on

    def done(self) -> bool:
        return self.step_index >= self.config.generations

    def step(self) -> dict[str, Any]:
        self.sample = self.step_index + 1 if self.config.fresh_data else 0
        self.parent, self.parent_score, record = evolve_generation(
            self.parent, self.parent_score, self.fitness, self.budget, self.rng, self.config, self.sample
        )
        return {"generation": self.step_index + 1, **record}

    def finish(self) -> None:
        if self.sample:  # the result's fitness on the reference data, comparable with other engines'
            self.parent_score = self.fitness.evaluate([self.parent], self.final_stage)[0]
            self.sample = 0

    def best(self) -> tuple[Genome, float]:
        return self.parent, self.parent_score

    @classmethod
    def planned_steps(cls, config) -> int:
        return config.generations

    @classmethod
    def planned_evaluations(cls, config: EvolutionConfig, survivors, space) -> dict[int, int]:
        counts = {s: n * config.generations for s, n in generation_evaluations(config, survivors).items()}
        counts[len(survivors) - 1] += 2 if config.fresh_data and config.generations else 1  # first and last
        return counts

    def get_state(self) -> dict[str, Any]:
        return {"parent": list(self.parent), "parent_score": self.parent_score, "sample": self.sample}

    def set_state(self, state: dict[str, Any]) -> None:
        self.parent = tuple(state["parent"])
        self.parent_score = state["parent_score"]
        self.sample = state.get("sample", 0)
