"""Typed, validated configuration of a search run (the supernet and calibration have their own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.search.budget import COST_KINDS
from sparsearch.search.errors import SparsearchError

BASELINES = ("uniform", "owl", "flap")
ENGINES = ("evolution", "nsga2", "tpe", "tyr") + BASELINES
INITS = BASELINES + ("best",)


@dataclass(frozen=True)
class SearchConfig:
    """engine: a search engine (evolution | nsga2 | tpe | tyr) or a one-shot baseline allocation
    (uniform | owl | flap: no search). init: where a search starts (a baseline's allocation, or
    ``best``: the baseline with the lowest final-stage fitness). baseline_samples: calibration
    sequences that OWL/FLAP score activations on. target_sparsity: fraction of the prunable cost
    removed; tolerance: the budget band below the limit, as a fraction of the dense cost;
    schedule: fitness stages (see fitness.schedule)."""

    engine: str = "evolution"
    target_sparsity: float = 0.5
    cost: str = "params"
    tolerance: float = 0.01
    schedule: str = "4:512,2:1024,1:2048"
    seed: int = 0
    generations: int = 20
    offspring: int = 8
    max_flips: int = 3
    population: int = 24
    blocks: int = 0
    trials: int = 200
    storage: str | None = None
    study_name: str = "sparsearch"
    budget_mode: str = "repair"
    rounds: int = 4
    topk: int = 64
    eval_batch_size: int = 4
    init: str = "uniform"
    baseline_samples: int = 32

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise SparsearchError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if not 0.0 < self.target_sparsity < 1.0:
            raise SparsearchError(f"--target-sparsity must be within (0, 1), got {self.target_sparsity}")
        if self.init not in INITS:
            raise SparsearchError(f"unknown --init {self.init!r}; choose from {', '.join(INITS)}")
        if self.baseline_samples < 1:
            raise SparsearchError(f"--baseline-samples must be >= 1, got {self.baseline_samples}")
        if self.cost not in COST_KINDS[:2]:
            raise SparsearchError(f"--cost must be params or flops, got {self.cost!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise SparsearchError(f"--tolerance must be within [0, 1), got {self.tolerance}")
        self.token_schedule  # validates
        self.engine_config()  # validates the engine's own fields

    @property
    def token_schedule(self) -> TokenSchedule:
        try:
            return TokenSchedule.parse(self.schedule)
        except ValueError as e:
            raise SparsearchError(str(e)) from None

    def engine_config(self) -> Any:
        from sparsearch.search.evolution import EvolutionConfig
        from sparsearch.search.nsga2 import NSGA2Config
        from sparsearch.search.tpe import TPEConfig
        from sparsearch.search.tyr import TyrConfig

        try:
            if self.engine == "evolution":
                return EvolutionConfig(self.generations, self.offspring, self.max_flips)
            if self.engine == "nsga2":
                return NSGA2Config(population=self.population, generations=self.generations, blocks=self.blocks)
            if self.engine == "tpe":
                return TPEConfig(trials=self.trials, storage=self.storage, study_name=self.study_name,
                                 budget_mode=self.budget_mode)
            if self.engine == "tyr":
                return TyrConfig(rounds=self.rounds, generations=self.generations, offspring=self.offspring,
                                 max_flips=self.max_flips)
        except ValueError as e:
            raise SparsearchError(str(e)) from None
        return None
