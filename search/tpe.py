"""Optuna TPE over per-unit levels, driven by ask/tell on the driver.

One integer parameter per unit (its level; levels are ordered by sparsity). The start genome (uniform,
or a given one) is enqueued as the first trial. The study lives in Optuna storage: a journal file in the run
directory by default (``optuna.log``), or any Optuna RDB URL (sqlite, PostgreSQL); ``resume``
continues the same study (``load_if_exists``), and a trial left running by a killed driver is
finished from the evaluation cache.

Budget handling (``budget_mode``):

- ``repair`` (default): the sampled genome is repaired into the budget band, the repaired genome
  is scored, and the score is told for the sampled parameters (the repaired genome is kept as a
  user attribute). Every trial spends one evaluation on a genome that meets the budget; this is
  the default because in tens of dimensions almost no independently sampled genome lands in a
  1% cost band, so a pure constraint would waste most trials.
- ``constraint``: the budget is an Optuna constraint (``trial.set_constraint``); a genome over
  the limit is told a penalty without being scored, and TPE learns the feasible region from the
  violations (cheap trials, useful when evaluations are costly and the budget loose).

Trials are scored on fitness stage ``stage`` (default 0, the cheapest). At the end, the
``finalists`` best distinct feasible trials are scored again on the schedule's final stage and the
best of them is the result (its fitness is then comparable with other engines'; a cheap stage's
best score is biased low by selection).

Each trial's sampler is seeded from the run seed and the trial number, so a resumed study draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from sparsearch.search.config import require, require_choice, setting
from sparsearch.search.engine import Engine
from sparsearch.search.errors import SparsearchError
from sparsearch.search.space import Genome

BUDGET_MODES = ("repair", "constraint")
JOURNAL = "optuna.log"


@dataclass(frozen=True)
class TPEConfig:
    trials: int = setting(200, "TPE trials")
    storage: str | None = setting(None, "TPE: Optuna storage URL (default: a journal file in the run directory)",
                                  metavar="URL")
    study_name: str = setting("sparsearch", "TPE study name")
    budget_mode: str = setting("repair", "TPE budget handling", choices=BUDGET_MODES)
    stage: int = setting(0, "fitness stage that scores each trial or individual")
    startup_trials: int = setting(10, "TPE random trials before the model")
    penalty: float = setting(1e6, "TPE value told for a genome over the budget", cli=False)
    finalists: int = setting(4, "TPE: best trials re-scored on the final fitness stage")

    def __post_init__(self) -> None:
        require_choice("budget_mode", self.budget_mode, BUDGET_MODES)
        require(self.trials >= 1, "trials", self.trials, ">= 1")
        require(self.startup_trials >= 0, "startup_trials", self.startup_trials, ">= 0")
        require(self.stage >= 0, "stage", self.stage, ">= 0")
        require(self.finalists >= 0, "finalists", self.finalists, ">= 0")


class TPEEngine(Engine):
    name = "tpe"
    config: TPEConfig

    def _storage(self):
        if self.config.storage:
            return self.config.storage
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.files.dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(self.files.dir / JOURNAL)))

    def _open(self, *, fresh: bool) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if fresh and not self.config.storage:
            (self.files.dir / JOURNAL).unlink(missing_ok=True)
        try:
            self.study = optuna.create_study(
                storage=self._storage(), study_name=self.config.study_name, direction="minimize",
                load_if_exists=not fresh,
            )
        except optuna.exceptions.DuplicatedStudyError:
            raise SparsearchError(
                f"study {self.config.study_name!r} already exists in {self.config.storage}; use --resume or another name"
            ) from None

    def initialize(self) -> None:
        self._open(fresh=True)
        self.study.enqueue_trial({u.name: g for u, g in zip(self.space.units, self.start_genome())})
        self.best_seen: tuple[list[int], float] | None = None

    def done(self) -> bool:
        return self.step_index >= self.config.trials

    def step(self) -> dict[str, Any]:
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if running:  # left by a killed driver: finish it with the same parameters
            trial = optuna.trial.Trial(self.study, running[0]._trial_id)
        else:
            self.study.sampler = optuna.samplers.TPESampler(
                seed=self.seed * 1_000_003 + len(self.study.trials), n_startup_trials=self.config.startup_trials,
                multivariate=True,
            )
            trial = self.study.ask()
        sampled = tuple(trial.suggest_int(u.name, 0, len(lv) - 1) for u, lv in zip(self.space.units, self.space.levels))
        record: dict[str, Any] = {"trial": trial.number}
        if self.config.budget_mode == "repair":
            genome = self.budget.repair(sampled, self.rng)
        else:
            genome = sampled
            with warnings.catch_warnings():  # a resumed trial may already carry it (same value)
                warnings.simplefilter("ignore", UserWarning)
                trial.set_constraint("budget", (self.budget.cost(genome) - self.budget.limit) / self.budget.model.dense())
        if self.budget.within_limit(genome):
            value = self.fitness.evaluate([genome], self.config.stage)[0]
            if self.budget.feasible(genome) and (self.best_seen is None or value < self.best_seen[1]):
                self.best_seen = (list(genome), value)
        else:
            value = self.config.penalty
            record["infeasible"] = True
        trial.set_user_attr("genome", list(genome))
        self.study.tell(trial, value)
        record["value"] = value
        return record

    def finish(self) -> None:
        final = self.final_stage
        if not self.config.finalists or self.config.stage >= final:
            return
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        ranked = sorted((t for t in done if t.value < self.config.penalty), key=lambda t: (t.value, t.number))
        genomes = [g for g in dict.fromkeys(tuple(t.user_attrs["genome"]) for t in ranked) if self.budget.feasible(g)]
        genomes = genomes[: self.config.finalists]
        if genomes:
            scores = self.fitness.evaluate(genomes, final)
            i = min(range(len(genomes)), key=lambda k: (scores[k], k))
            self.best_seen = (list(genomes[i]), scores[i])
            self.log(f"tpe: {len(genomes)} finalists scored on stage {final}; best {scores[i]:.5f}")

    @classmethod
    def planned_evaluations(cls, config: TPEConfig, survivors, space) -> dict[int, int]:
        final = len(survivors) - 1
        counts = {config.stage: config.trials}
        if config.finalists and config.stage < final:
            counts[final] = counts.get(final, 0) + config.finalists
        return counts

    def best(self) -> tuple[Genome, float]:
        if self.best_seen is None:
            return self.start_genome(), float("inf")
        return tuple(self.best_seen[0]), self.best_seen[1]

    def get_state(self) -> dict[str, Any]:
        return {"best_seen": self.best_seen}

    def set_state(self, state: dict[str, Any]) -> None:
        self._open(fresh=False)
        self.best_seen = tuple(state["best_seen"]) if state["best_seen"] else None
