"""The base class of search engines.

Call order (all driven by :meth:`Engine.run`)::

    engine = SomeEngine(space, budget, fitness, config, run_dir=R, seed=S,  # nothing evaluated yet
                        start=None)   # or a genome to start from instead of the uniform one
    result = engine.run(resume=False)
        # resume and a checkpoint in R  -> engine.load_state(checkpoint["state"])
        # otherwise                     -> engine.initialize()
        # while not engine.done():
        #     record = engine.step()            one generation / trial; evaluates via self.fitness
        #     checkpoint (engine.state()), one history.jsonl line (record), one log line
        # engine.finish()                       e.g. re-score finalists on the final stage
        # engine.best() -> Result

Engines are deterministic given ``seed`` and the fitness: all randomness comes from ``self.rng``
(a :class:`random.Random` whose state is checkpointed), and every evaluation goes through
:class:`~search.checkpoint.CachedFitness`, so a resumed run replays the interrupted step from
cached scores and ends where an uninterrupted run would.
"""

from __future__ import annotations

import abc
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sparsearch.search.budget import Budget
from sparsearch.search.checkpoint import CachedFitness, Fitness, RunFiles
from sparsearch.search.errors import SparsearchError
from sparsearch.search.space import Genome, SearchSpace


@dataclass
class Result:
    best_genome: Genome
    best_fitness: float
    evaluations: int
    wall_time_s: float
    pareto: list[dict[str, Any]] = field(default_factory=list)


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class Engine(abc.ABC):
    name: str = "engine"

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        fitness: Fitness,
        config: Any,
        *,
        run_dir: str,
        seed: int = 0,
        log: Callable[[str], None] | None = print,
        start: Genome | None = None,
    ):
        if start is not None:
            space.validate(tuple(start))
        self.start = None if start is None else tuple(start)
        self.space = space
        self.budget = budget
        self.config = config
        self.files = RunFiles(run_dir)
        self.fitness = CachedFitness(fitness, self.files)
        self.seed = seed
        self.rng = random.Random(seed)
        self.log = log or (lambda _msg: None)
        self.step_index = 0

    # -- the engine-specific part --------------------------------------------------------------
    @abc.abstractmethod
    def initialize(self) -> None:
        """Set up the first population / study (may evaluate, e.g. the uniform genome)."""

    @abc.abstractmethod
    def step(self) -> dict[str, Any]:
        """One generation or trial; returns its history record (JSON-serialisable)."""

    @abc.abstractmethod
    def done(self) -> bool: ...

    @abc.abstractmethod
    def best(self) -> tuple[Genome, float]:
        """The best feasible genome so far and its fitness at the final stage."""

    @abc.abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Engine state (JSON-serialisable), excluding ``rng`` and ``step_index``."""

    @abc.abstractmethod
    def set_state(self, state: dict[str, Any]) -> None: ...

    def finish(self) -> None:
        """Called once after the last step, before :meth:`best` gives the result (e.g. to score
        finalists on the final stage). Must be deterministic given the evaluation cache."""

    def pareto(self) -> list[dict[str, Any]]:
        return []

    @property
    def evaluations(self) -> int:
        """Evaluations completed in this run (resumed parts included), in every space it used."""
        return self.files.evaluation_count()

    # -- the shared driver ---------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> Result:
        started = time.perf_counter()
        checkpoint = self.files.load_checkpoint() if resume else None
        if checkpoint is not None:
            if checkpoint.get("engine") != self.name or checkpoint.get("seed") != self.seed:
                raise SparsearchError(
                    f"the run directory holds a {checkpoint.get('engine')} run with seed {checkpoint.get('seed')}; "
                    f"cannot resume it as {self.name} with seed {self.seed}"
                )
            self.step_index = checkpoint["step"]
            set_rng_state(self.rng, checkpoint["rng"])
            self.set_state(checkpoint["state"])
            self.files.truncate_history(self.step_index)
            elapsed = checkpoint.get("wall_time_s", 0.0)
            self.log(f"{self.name}: resumed at step {self.step_index} ({self.evaluations} evaluations done)")
        else:
            if not resume:
                self.files.reset()
                self.fitness.cache.clear()
            elapsed = 0.0
            self.initialize()
            self._checkpoint(elapsed + time.perf_counter() - started)
        while not self.done():
            record = self.step()
            self.step_index += 1
            best_genome, best_fit = self.best()
            record = {"step": self.step_index, "evaluations": self.evaluations, "best_fitness": best_fit,
                      "best_cost": self.budget.cost(best_genome), **record}
            self.files.append_history(record)
            self._checkpoint(elapsed + time.perf_counter() - started)
            self.log(self.describe(record))
        self.finish()
        best_genome, best_fit = self.best()
        return Result(best_genome, best_fit, self.evaluations,
                      round(elapsed + time.perf_counter() - started, 3), self.pareto())

    def describe(self, record: dict[str, Any]) -> str:
        """The one human-readable log line of a step."""
        return (f"{self.name} step {record['step']:>4}: best {record['best_fitness']:.5f} "
                f"cost {record['best_cost'] / self.budget.limit:.4f}x budget, {record['evaluations']} evaluations")

    def _checkpoint(self, wall: float) -> None:
        self.files.save_checkpoint({
            "engine": self.name, "seed": self.seed, "step": self.step_index, "rng": rng_state(self.rng),
            "state": self.get_state(), "wall_time_s": wall,
        })

    # -- helpers shared by engines ---------------------------------------------------------------
    def start_genome(self) -> Genome:
        """The genome the search starts from: ``start`` if one was given (e.g. a baseline's
        allocation), else the uniform genome at the budget; repaired into the band if needed."""
        if self.start is not None:
            return self.budget.repair(self.start, self.rng)  # unchanged (no randomness drawn) when feasible
        dense = self.budget.model.dense()
        target = 1.0 - self.budget.limit / dense if dense else 0.0
        return self.budget.repair(self.space.uniform(target), self.rng)
