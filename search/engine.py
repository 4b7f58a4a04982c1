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
        #     with a validation split: the step's best is scored on it (a candidate); the run stops
        #     early when no candidate has improved on it for ``patience`` steps
        # engine.finish()                       e.g. re-score finalists on the final stage
        # engine.best() -> Result               with a validation split: the validation-best candidate
        #                                       (the starts, the uniform genome, every step's best)

Engines are deterministic given ``seed`` and the fitness: all randomness comes from ``self.rng``
(a :class:`random.Random` whose state is checkpointed), and every evaluation goes through
:class:`~sparsearch.search.cache.CachedFitness`, so a resumed run replays the interrupted step from
cached scores and ends where an uninterrupted run would.

**Choosing on validation.** When the fitness has a validation split (sequences of the calibration
source that no stage scores on, :data:`~sparsearch.search.fitness.VALIDATION`), a search's result is
not simply its own best: every candidate it produced (the starts, the uniform genome, the best
after each step, the best at the end) is scored on the validation split, and the one that scores
best there is the result. A search that fits its fitness tokens rather than the model stops
improving on validation; ``patience`` steps without a better validation score end it.
"""

from __future__ import annotations

import abc
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from sparsearch.search.budget import Budget
from sparsearch.search.cache import CachedFitness
from sparsearch.base.errors import SparsearchError
from sparsearch.search.fitness import VALIDATION, Fitness
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
    validation: dict[str, Any] | None = None  # candidates and their validation scores, and the chosen one


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


StartProvider = Callable[[SearchSpace, Budget, CachedFitness], "Genome | dict[str, Genome]"]
"""A start computed with the run's fitness (e.g. the knapsack allocation of probe scores): called
through the evaluation cache, so a resumed run reuses its evaluations. It returns a genome, or
several by name (each becomes a start, in order)."""


class Engine(abc.ABC):
    name: str = "engine"
    one_shot: bool = False  # no search: the result is the (best) start
    probes_fitness: bool = False  # a one-shot start that costs evaluations of its own
    chooses_on_validation: bool = True  # the result is the validation-best candidate (when the fitness validates)
    patience_counts_steps: bool = True  # a step is a generation or round: ``patience`` applies to it

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
        patience: int = 0,
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
        self.patience = patience
        self.candidates: list[dict[str, Any]] = []  # {"name", "genome", "kl"} scored on the validation split
        self.since_improved = 0  # steps since a candidate last improved the validation score

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

    @classmethod
    def planned_steps(cls, config: Any) -> int:
        """How many steps (generations, trials) a run makes at most, for ``sparsearch plan``."""
        return 0

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
        checkpoint = self.files.load_checkpoint(self.name, self.seed) if resume else None
        if checkpoint is not None:
            elapsed = self._restore(checkpoint)
        else:
            elapsed = 0.0
            self._score_starts()
            self.initialize()
            if self.validating:
                for name, genome in [("uniform", self.uniform_genome()), *self.starts.items()]:
                    self._candidate(name if name == "uniform" else f"start {name}", genome)
            self._checkpoint(elapsed + time.perf_counter() - started)
        while not self.done() and not self._out_of_patience():
            record = self.step()
            self.step_index += 1
            best_genome, best_fit = self.best()
            record = {"step": self.step_index, "evaluations": self.evaluations, "best_fitness": best_fit,
                      "best_cost": self.budget.cost(best_genome), **record}
            if self.validating:
                record["validation"] = self._candidate(f"step {self.step_index}", best_genome)
            self.files.append_history(record)
            self._checkpoint(elapsed + time.perf_counter() - started)
            self.log(self.describe(record))
        self.finish()
        best_genome, best_fit, validation = self._result_genome()
        return Result(best_genome, best_fit, self.evaluations, round(elapsed + time.perf_counter() - started, 3),
                      self.pareto(), dict(self.start_scores), validation)

    def _restore(self, checkpoint: dict[str, Any]) -> float:
        """Continue from ``checkpoint`` (the step, starts, candidates, rng and engine state; the
        history after its step is cut); returns the run's wall time before it."""
        self.step_index = checkpoint["step"]
        self.start_scores = checkpoint.get("start_scores", {})
        self.starts = {name: tuple(g) for name, g in checkpoint.get("starts", {}).items()}
        self.candidates = checkpoint.get("candidates", [])
        self.since_improved = checkpoint.get("since_improved", 0)
        try:
            set_rng_state(self.rng, checkpoint["rng"])
            for g in self.starts.values():
                self.space.validate(g)
            self.set_state(checkpoint["state"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise SparsearchError(f"checkpoint {self.files.dir / 'checkpoint.json'} does not fit this run "
                                  f"({type(e).__name__}: {e}); start a new run without --resume") from None
        self.files.truncate_history(self.step_index)
        self.log(f"{self.name}: resumed at step {self.step_index} ({self.evaluations} evaluations done)")
        return checkpoint.get("wall_time_s", 0.0)

    def _result_genome(self) -> tuple[Genome, float, dict[str, Any] | None]:
        """The run's result: the engine's best, or with a validation split the validation-best
        candidate (scored on the final stage) and the candidates' record."""
        best_genome, best_fit = self.best()
        if not self.validating:
            return best_genome, best_fit, None
        self._candidate("final", best_genome)
        chosen = min(self.candidates, key=lambda c: c["kl"])  # the first on ties
        validation = {"candidates": self.candidates, "chosen": chosen["name"]}
        if tuple(chosen["genome"]) != best_genome:
            best_genome = tuple(chosen["genome"])
            best_fit = self.fitness.evaluate([best_genome], self.final_stage)[0]
        self.log(f"{self.name}: chose {chosen['name']} (validation {chosen['kl']:.5f})")
        return best_genome, best_fit, validation

    # -- choosing on validation ----------------------------------------------------------------
    @property
    def validating(self) -> bool:
        return self.chooses_on_validation and not self.one_shot and bool(getattr(self.fitness, "validates", False))

    def _candidate(self, name: str, genome: Genome) -> float:
        """Score ``genome`` on the validation split and keep it as a candidate (once per genome);
        returns its score."""
        genome = tuple(genome)
        score = self.fitness.evaluate([genome], VALIDATION)[0]
        if all(tuple(c["genome"]) != genome for c in self.candidates):
            best = min((c["kl"] for c in self.candidates), default=float("inf"))
            self.candidates.append({"name": name, "genome": list(genome), "kl": score})
            if name.startswith("step"):
                self.since_improved = 0 if score < best else self.since_improved + 1
        elif name.startswith("step"):
            self.since_improved += 1
        return score

    def _out_of_patience(self) -> bool:
        if not (self.validating and self.patience and self.patience_counts_steps):
            return False
        if self.since_improved >= self.patience:
            self.log(f"{self.name}: no better validation score for {self.patience} steps; stopping")
            return True
        return False

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
            "candidates": self.candidates, "since_improved": self.since_improved,
        })

    # -- helpers shared by engines ---------------------------------------------------------------
    def _score_starts(self) -> None:
        if not self.starts:
            return
        computed: dict[str, Genome] = {}
        for name, start in self.starts.items():
            if callable(start):
                made = start(self.space, self.budget, self.fitness)
                computed.update(made if isinstance(made, dict) else {name: made})
                self.log(f"start {name}: computed from {self.evaluations} evaluations")
            else:
                computed[name] = start
        self.starts = computed
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
        return self.uniform_genome(self.rng)

    def uniform_genome(self, rng: random.Random | None = None) -> Genome:
        """The uniform genome at the budget's target, repaired into the band (with ``rng``, or a
        generator of the run's seed, so that the engine's own draws are not disturbed)."""
        dense = self.budget.model.dense()
        target = 1.0 - self.budget.limit / dense if dense else 0.0
        return self.budget.repair(self.space.uniform(target), rng or random.Random(self.seed))
