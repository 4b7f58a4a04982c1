"""The base class of search engines.

Call order (all driven by :meth:`Engine.run`)::

    engine = SomeEngine(space, budget, fitness, config, run_dir=R, seed=S,  # nothing evaluated yet
                        starts=None)  # or {name: genome}: candidate starts, e.g. one-shot baselines
    result = engine.run(resume=False, settings={...})
        # resume                        -> R's settings (engine, seed, ``settings``) must match;
        #                                  the evaluation cache is kept
        # otherwise                     -> R's run files are reset
        # a checkpoint in R (resume)    -> engine.set_state(checkpoint["state"])
        # else                          -> the starts are scored on the final stage; engine.initialize()
        # while not engine.done():
        #     record = engine.step()            one generation / trial; evaluates via self.fitness
        #     one history.jsonl line (record), checkpoint (engine.get_state()), one log line
        # engine.finish()                       e.g. re-score finalists on the final stage
        # engine.best() -> Result

Engines are deterministic given ``seed`` and the fitness: all randomness comes from ``self.rng``
(a :class:`random.Random` whose state is checkpointed), and every evaluation goes through
:class:`~sparsearch.search.cache.CachedFitness`, so a resumed run replays the interrupted step from
cached scores and ends where an uninterrupted run would.
"""

from __future__ import annotations

import abc
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.search.errors import SparsearchError
from sparsearch.search.fitness import Fitness
from sparsearch.search.runfiles import RunFiles
from sparsearch.search.space import Genome, SearchSpace


@dataclass(frozen=True)
class Result:
    best_genome: Genome
    best_fitness: float
    evaluations: int
    wall_time_s: float
    pareto: list[dict[str, Any]] = field(default_factory=list)
    start_scores: dict[str, float] = field(default_factory=dict)


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


StartProvider = Callable[[SearchSpace, Budget, CachedFitness], Genome]
"""A start computed with the run's fitness (e.g. the knapsack allocation of probe scores): called
through the evaluation cache, so a resumed run reuses its evaluations."""


class Engine(abc.ABC):
    name: str = "engine"
    one_shot: bool = False  # no search: the result is the (best) start
    probes_fitness: bool = False  # a one-shot start that costs evaluations of its own

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
        starts: Mapping[str, Genome | StartProvider] | None = None,
    ):
        self.starts: dict[str, Genome | StartProvider] = {
            name: g if callable(g) else tuple(int(x) for x in g) for name, g in (starts or {}).items()
        }
        for g in self.starts.values():
            if not callable(g):
                space.validate(g)
        self.start_scores: dict[str, float] = {}
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
        """Set up the first population / study (may evaluate, e.g. the start genome)."""

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

    @classmethod
    def planned_evaluations(cls, config: Any, survivors: Sequence[int], space: SearchSpace) -> dict[int, int]:
        """How many evaluations a run makes at each stage (an upper bound where the evaluation
        cache may save some), for ``sparsearch plan``; the starts' are not included."""
        raise NotImplementedError

    @property
    def evaluations(self) -> int:
        """Evaluations completed in this run (resumed parts included), in every space it used."""
        return self.files.evaluation_count()

    @property
    def final_stage(self) -> int:
        return len(self.fitness.survivors) - 1

    # -- the shared driver ---------------------------------------------------------------------
    def run(self, *, resume: bool = False, settings: Mapping[str, Any] | None = None) -> Result:
        """Search (or continue the run in the run directory with ``resume``). ``settings`` are the
        run's fitness and budget settings (JSON values): a checkpoint written under other
        settings is refused on resume, naming the first that differs."""
        started = time.perf_counter()
        settings = dict(settings or {})
        if resume:
            self._check_settings(settings)
        else:
            self.files.reset()
            self.fitness.cache.clear()
        self.files.save_settings({"engine": self.name, "seed": self.seed, **settings})
        checkpoint = self.files.load_checkpoint() if resume else None
        if checkpoint is not None:
            self.step_index = checkpoint["step"]
            set_rng_state(self.rng, checkpoint["rng"])
            self.start_scores = checkpoint.get("start_scores", {})
            self.starts = {name: tuple(g) for name, g in checkpoint.get("starts", {}).items()}
            self.set_state(checkpoint["state"])
            self.files.truncate_history(self.step_index)
            elapsed = checkpoint.get("wall_time_s", 0.0)
            self.log(f"{self.name}: resumed at step {self.step_index} ({self.evaluations} evaluations done)")
        else:
            elapsed = 0.0
            self._score_starts()
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
        return Result(best_genome, best_fit, self.evaluations, round(elapsed + time.perf_counter() - started, 3),
                      self.pareto(), dict(self.start_scores))

    def describe(self, record: dict[str, Any]) -> str:
        """The one human-readable log line of a step."""
        return (f"{self.name} step {record['step']:>4}: best {record['best_fitness']:.5f} "
                f"cost {record['best_cost'] / self.budget.limit:.4f}x budget, {record['evaluations']} evaluations")

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to resume a run made by another engine, seed, or fitness/budget settings."""
        stored = self.files.load_settings()
        if stored is None:
            return  # nothing was evaluated yet: a new run
        if stored.get("engine") != self.name or stored.get("seed") != self.seed:
            raise SparsearchError(
                f"the run directory holds a {stored.get('engine')} run with seed {stored.get('seed')}; "
                f"cannot resume it as {self.name} with seed {self.seed}"
            )
        stored = {k: v for k, v in stored.items() if k not in ("engine", "seed")}
        for key in sorted(set(stored) | set(settings)):
            if stored.get(key) != settings.get(key):
                raise SparsearchError(
                    f"cannot resume: {key} was {stored.get(key)!r} in this run, now {settings.get(key)!r} "
                    "(resume with the original setting, or start a new run without --resume)"
                )

    def _checkpoint(self, wall: float) -> None:
        self.files.save_checkpoint({
            "engine": self.name, "seed": self.seed, "step": self.step_index, "rng": rng_state(self.rng),
            "starts": {name: list(g) for name, g in self.starts.items() if not callable(g)},
            "start_scores": self.start_scores, "state": self.get_state(), "wall_time_s": wall,
        })

    # -- helpers shared by engines ---------------------------------------------------------------
    def _score_starts(self) -> None:
        if not self.starts:
            return
        for name, start in self.starts.items():
            if callable(start):
                self.starts[name] = start(self.space, self.budget, self.fitness)
                self.log(f"start {name}: computed from {self.evaluations} evaluations")
        names = list(self.starts)
        scores = self.fitness.evaluate([self.starts[n] for n in names], self.final_stage)
        self.start_scores = dict(zip(names, scores))
        for n in names:
            self.log(f"start {n}: sparsity {self.space.sparsity(self.starts[n]):.4f}, fitness {self.start_scores[n]:.5f}")

    def start_name(self) -> str | None:
        """The start with the lowest final-stage fitness (the first on ties), or ``None``."""
        if not self.start_scores:
            return None
        names = list(self.starts)
        return min(names, key=lambda n: (self.start_scores[n], names.index(n)))

    def start_genome(self) -> Genome:
        """The genome the search starts from: the best of ``starts`` if any were given (e.g. the
        one-shot baselines), else the uniform genome at the budget; repaired into the band if needed."""
        name = self.start_name()
        if name is not None:
            return self.budget.repair(self.starts[name], self.rng)  # unchanged (no randomness drawn) when feasible
        dense = self.budget.model.dense()
        target = 1.0 - self.budget.limit / dense if dense else 0.0
        return self.budget.repair(self.space.uniform(target), self.rng)
