"""Optuna TPE over per-unit pruning, driven by ask/tell on the driver.

One parameter per unit (see the budget modes below). The study lives in Optuna storage: a
journal file in the run directory by default (``optuna.log``), or any Optuna RDB URL (sqlite,
PostgreSQL); ``resume`` continues the same study.

Budget handling (``budget_mode``):

- ``shift`` (default): the parameters are one preferred sparsity in [0, 1] per unit, and the
  scored genome is the deterministic, budget-spending map of :mod:`sparsearch.search.preference`
  (every unit at the level nearest its preference plus one common shift). Every sampled point is
  a genome in the band. The study is told the scored genome's own level sparsities (the sampled
  trial, when they differ, is superseded, which TPE ignores): many sampled points map to one
  genome, and telling that genome's canonical point lets TPE's good set hold genomes, not one of
  many points that stand for each. It learns which units to make sparser than others; the
  budget sets the level.
- ``repair``: one integer parameter per unit (its level); the sampled genome is repaired into the
  band by random single-level moves and the repaired genome is scored. The study is told what was
  scored: the repaired genome is added as a complete trial with its score (the sampled trial, if it
  differs, is superseded, which TPE ignores). In tens of dimensions almost no independently
  sampled genome lands in a 1% cost band, so the repair moves many units at random and TPE learns
  slowly (``bench/search_synthetic.py``).
- ``constraint``: integer levels; both sides of the band are Optuna constraints
  (``trial.set_constraint``); a genome outside the band is told a penalty without being scored,
  and TPE learns the feasible region from the violations (cheap trials, for loose budgets).

The sampler is Optuna's multivariate TPE. Each trial keeps the best of ``ei_candidates`` draws
from the good trials' model by expected improvement. In ``shift`` mode the default is 128
(Optuna's is 24): every draw is a feasible genome, and in tens of dimensions 24 draws rarely hold a
better one (measured on ``bench/search_synthetic.py``: docs/benchmarks.md, TPE tuning); a noisy
cheap-stage score is checked by the finalists' re-scoring. The other modes keep Optuna's 24:
there most draws fall outside the band, and a greedier draw makes ``constraint`` explore the
feasible region less.

The good set that models l(x) is the best 10% of the trials, at most ``good_trials``: 10 in
``shift`` mode (Optuna's cap is 25, kept in the other modes). A smaller good set selects harder,
and in ``shift`` mode that is worth most (caps of 5, 7, 10, 15 and 25 compared in
docs/benchmarks.md). The cap only acts beyond 100 trials.
Optuna 4.9 deprecated ``gamma``, the argument that sets it, with removal planned for Optuna 6.

Kernel widths (``shift`` mode): a draw from l(x) is one good trial's point with Gaussian noise in
every parameter, each kernel as wide as its larger gap to its neighbours among the good trials,
but at least ``kernel_floor`` (0.4) of the unit's level step, where Optuna's least width is the
parameter's range / (n + 2): for 10 good trials over 9 levels, 0.67 of a step, so every draw
moves about half of all units (with 0.4, about a fifth), and the last few percent come slowly.
Optuna lets a sampler replace its estimator (``_LevelKernelEstimator``); its other knobs do not
reach the width (a smaller ``prior_weight`` did not help; no ``consider_magic_clip`` lets the
good set collapse onto one genome). The floor 0.4 was chosen against 0.3, 0.35 and 0.5 (0.3
draws some genomes twice); with it, the engine needs about three times evolution's evaluations
on the synthetic benchmark (per-seed figures: docs/benchmarks.md, TPE tuning).

Step 0 scores the start genome (repaired into the band unless ``constraint``), told as a trial
whose parameters are that genome (its levels, or in ``shift`` its levels' sparsities).

Trials are scored on fitness stage ``stage`` (default 0, the cheapest). At the end, the
``finalists`` best distinct feasible trials are scored again on the schedule's final stage and the
best of them is the result (its fitness is then comparable with other engines'; a cheap stage's
best score is biased low by selection).

Exact resume: each step's sampler is seeded from the run seed and the step number, and every
trial records its step. A resumed step whose scored trial is already in the study (the driver died
after telling, before its checkpoint) is replayed from the study; a trial left running (the
driver died during ask or the evaluation) is superseded and the step asks again, drawing the
same parameters, since superseded trials do not enter TPE's model.

A superseded trial is marked ``PRUNED`` with the user attribute ``reason`` (``"superseded: ..."``),
so that a dashboard of the study (optuna-dashboard) shows why it has no value; the sampler leaves
every pruned trial out of its model (the engine prunes no other trial), which keeps it the model
of the scored trials alone (Optuna's TPE would otherwise count pruned trials as bad ones).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.probability_distributions import _BatchedTruncNormDistributions
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from sparsearch.base.settings import require, require_choice, setting
from sparsearch.search.engine import Engine
from sparsearch.base.errors import ConfigError, SparsearchError, first_line
from sparsearch.search.preference import genome_of_preferences, preferences_of
from sparsearch.search.space import Genome

BUDGET_MODES = ("shift", "repair", "constraint")
JOURNAL = "optuna.log"


@dataclass(frozen=True)
class TPEConfig:
    trials: int = setting(200, "TPE trials")
    storage: str | None = setting(None, "TPE: Optuna storage URL (default: a journal file in the run directory)",
                                  metavar="URL")
    study_name: str = setting("sparsearch", "TPE study name")
    budget_mode: str = setting("shift", "TPE budget handling", choices=BUDGET_MODES)
    stage: int = setting(0, "fitness stage that scores each trial or individual")
    startup_trials: int = setting(10, "TPE random trials before the model")
    good_trials: int = setting(0, "TPE: the most best trials that model the good region l(x) (0: 10 in shift mode, "
                                  "Optuna's 25 otherwise)")
    kernel_floor: float = setting(0.0, "TPE, shift mode: the narrowest kernel of the trials' model, in level steps "
                                       "of each unit (0: 0.4)")
    ei_candidates: int = setting(0, "TPE draws per trial from the good trials' model, the best by expected improvement "
                                    "kept (0: 128 in shift mode, Optuna's 24 otherwise)")
    penalty: float = setting(1e6, "TPE value told for a genome outside the budget", cli=False)
    finalists: int = setting(4, "best feasible genomes re-scored on the final stage")

    def __post_init__(self) -> None:
        require_choice("budget_mode", self.budget_mode, BUDGET_MODES)
        require(self.trials >= 1, "trials", self.trials, ">= 1")
        require(self.startup_trials >= 0, "startup_trials", self.startup_trials, ">= 0")
        require(self.good_trials >= 0, "good_trials", self.good_trials, ">= 0")
        require(self.ei_candidates >= 0, "ei_candidates", self.ei_candidates, ">= 0")
        require(math.isfinite(self.kernel_floor) and self.kernel_floor >= 0, "kernel_floor", self.kernel_floor, ">= 0")
        require(self.kernel_floor == 0 or self.budget_mode == "shift", "kernel_floor", self.kernel_floor,
                "0 unless budget_mode is 'shift'")
        require(self.stage >= 0, "stage", self.stage, ">= 0")
        require(self.finalists >= 0, "finalists", self.finalists, ">= 0")
        if self.storage:
            _check_storage_url(self.storage)

    @property
    def candidates(self) -> int:
        """Optuna's ``n_ei_candidates`` for this budget mode (``ei_candidates``, or its mode's default)."""
        return self.ei_candidates or (128 if self.budget_mode == "shift" else 24)

    @property
    def good_set_cap(self) -> int:
        """The good set's cap for this budget mode (``good_trials``, or its mode's default)."""
        return self.good_trials or (10 if self.budget_mode == "shift" else 25)

    @property
    def kernel_floor_steps(self) -> float | None:
        """The narrowest kernel in level steps (``kernel_floor``, or 0.4); None: Optuna's own widths
        (the ``repair`` and ``constraint`` modes)."""
        return (self.kernel_floor or 0.4) if self.budget_mode == "shift" else None


def masked(url: str, text: str | None = None) -> str:
    """``url`` (or ``text``, which may quote it) with its password shown as ``***``."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: nothing to mask but what looks like user:password@
        parsed = None
    shown = parsed.render_as_string(hide_password=True) if parsed is not None else url
    out = url if text is None else text
    if parsed is not None and parsed.password:
        password = str(parsed.password)
        out = out.replace(url, shown).replace(f":{password}@", ":***@")
        if len(password) >= 6:  # a driver quoting it alone (shorter ones would mask other words)
            out = out.replace(password, "***")
    elif text is None:
        out = shown
    return out


def _check_storage_url(url: str) -> None:
    """An Optuna RDB storage URL whose database dialect is installed (connecting: :func:`probe_storage`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, ImportError, ValueError) as e:
        raise ConfigError(f"storage: {masked(url)!r} is not a usable Optuna storage URL "
                          f"({masked(url, first_line(e))})") from None


def probe_storage(url: str) -> None:
    """Import the database driver of the storage URL ``url`` and connect once, so that a missing
    driver, a wrong password or an unreachable server is one error line before any model is
    loaded or any file written (a new SQLite file is not created here: its folder is checked)."""
    import os
    import sqlite3

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    _check_storage_url(url)
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database or ""
            if db and db != ":memory:":
                path = Path(db).expanduser()
                if path.exists():
                    with sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True) as conn:
                        conn.execute("select count(*) from sqlite_master").fetchall()
                elif not os.access(path.absolute().parent, os.W_OK):
                    raise OSError(f"cannot create {path}: its folder is missing or not writable")
            return
        parsed.get_dialect().import_dbapi()
        timeout = {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb") else {}
        engine = create_engine(parsed, poolclass=NullPool, connect_args=timeout)
        try:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        finally:
            engine.dispose()
    except Exception as e:  # the driver's own errors, SQLAlchemy's, an OSError
        raise ConfigError(f"storage: cannot connect to {masked(url)} ({masked(url, first_line(e))})") from None


def good_set_size(trials: int, cap: int) -> int:
    """How many of ``trials`` finished trials form TPE's good set: Optuna's 10% (rounded up), at
    most ``cap`` (Optuna's own cap is 25)."""
    return min(math.ceil(0.1 * trials), cap)


def kernel_widths(centres: np.ndarray, low: float, high: float, floor: float) -> np.ndarray:
    """The widths of a one-dimensional Parzen estimator's Gaussian kernels at ``centres`` in
    [``low``, ``high``]: each kernel's larger distance to its neighbours in sorted order (the two
    outermost: to their one inner neighbour; a single kernel: to the farther end), clipped to
    [min(``floor``, (high - low) / min(100, n + 2)), high - low]. Without ``floor`` this is
    Optuna 5's rule for n observations; ``floor`` lowers the least width of a small set."""
    centres = np.asarray(centres, dtype=float)
    n = len(centres)
    if n == 0:
        return np.empty(0)
    if n == 1:
        widths = np.array([max(centres[0] - low, high - centres[0])])
    else:
        order = np.argsort(centres, kind="stable")
        gaps = np.diff(centres[order])
        widths = np.empty(n)
        widths[order] = np.maximum(np.append(0.0, gaps), np.append(gaps, 0.0))
    least = min(floor, (high - low) / min(100.0, n + 2.0))
    return np.clip(widths, least, high - low)


class _LevelKernelEstimator(_ParzenEstimator):
    """Optuna's Parzen estimator (a mixture of one kernel per observation and a prior) whose
    kernels for the parameters in ``floors`` have the widths of :func:`kernel_widths` with that
    floor. (Optuna's own least width is (high - low) / (n + 2): for a good set of 10 over a unit's
    9 levels, 0.67 of a level step, so every draw moves about half of all units; Optuna 4
    used one wider width for all kernels of its multivariate TPE.) Optuna lets a TPE sampler
    replace its estimator class (``_parzen_estimator_cls``); ``optuna<6`` is required."""

    def __init__(self, observations: dict[str, np.ndarray], search_space: dict[str, BaseDistribution],
                 parameters: Any, predetermined_weights: np.ndarray | None = None, *, floors: dict[str, float]):
        super().__init__(observations, search_space, parameters, predetermined_weights)
        kernels = list(self._mixture_distribution.distributions)
        for i, name in enumerate(search_space):
            n = len(observations[name]) if name in observations else 0
            if name not in floors or n == 0:
                continue
            k = kernels[i]
            if not isinstance(k, _BatchedTruncNormDistributions) or len(k.mu) != n + 1:
                raise RuntimeError(f"optuna {optuna.__version__}: unexpected TPE kernels for {name!r} ({type(k).__name__})")
            # the last kernel is the prior; the others sit on the observations
            kernels[i] = k._replace(sigma=np.append(kernel_widths(k.mu[:-1], k.low, k.high, floors[name]), k.sigma[-1]))
        self._mixture_distribution = self._mixture_distribution._replace(distributions=kernels)


class _KnownSpaceTPESampler(optuna.samplers.TPESampler):
    """Multivariate TPE over a search space known up front: the engine's parameters, the same in
    every trial. (The default infers it each step as the intersection of all trials' spaces, a
    cost that grows with the study; the engine makes a sampler per step, seeded by the step.)

    ``good_trials`` caps the good set. Optuna 4.9 deprecated the ``gamma`` argument that sets it
    (removal planned for Optuna 6, hence ``optuna<6`` in the requirements); its warning is
    silenced here because the engine sets it on purpose (see the module docstring).
    ``kernel_floors`` (parameter name: least kernel width) selects :class:`_LevelKernelEstimator`."""

    def __init__(self, search_space: dict[str, BaseDistribution], *, good_trials: int,
                 kernel_floors: dict[str, float] | None = None, **kwargs: Any):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`gamma`.*", category=FutureWarning)
            super().__init__(multivariate=True, gamma=functools.partial(good_set_size, cap=good_trials), **kwargs)
        self._known_space = search_space
        if kernel_floors:
            self._parzen_estimator_cls = functools.partial(_LevelKernelEstimator, floors=kernel_floors)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self._known_space)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_ScoredTrials(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(_ScoredTrials(study), trial, param_name, param_distribution)


class _ScoredTrials:
    """A study as the sampler sees it: its superseded (pruned) trials left out, as Optuna's TPE
    would otherwise count them among the bad trials."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if t.state != TrialState.PRUNED]


REASON = "reason"  # the user attribute that says why a trial was superseded


def _supersede(study: optuna.Study, trial: "optuna.Trial | optuna.trial.FrozenTrial", reason: str) -> None:
    """End ``trial`` as ``PRUNED`` with ``reason`` (``"superseded: ..."``) as its user attribute."""
    live = trial if isinstance(trial, optuna.Trial) else optuna.Trial(study, trial._trial_id)
    live.set_user_attr(REASON, f"superseded: {reason}")
    study.tell(live, state=TrialState.PRUNED)


def _heal_journal(path: Path) -> None:
    """Cut a torn last line (a write cut by a kill) so that later appends stay readable. A journal
    with any other line that is not a JSON record (another file in its place) is refused first."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        *lines, tail = data.split(b"\n")
        for n, line in enumerate(lines, 1):
            try:
                ok = isinstance(json.loads(line), dict)
            except (json.JSONDecodeError, UnicodeDecodeError):
                ok = False
            if not ok:
                raise SparsearchError(f"the Optuna journal {path} line {n} is not a journal record (another file in "
                                      "its place?); start a new run without --resume")
        if tail and not (tail.isascii() and tail.startswith(b"{")):
            raise SparsearchError(f"the Optuna journal {path} ends in something other than a journal record; "
                                  "start a new run without --resume")
        if tail:
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(tail))


class TPEEngine(Engine):
    name = "tpe"
    config: TPEConfig
    patience_counts_steps = False  # a step is one trial: a validation patience in trials would stop it at once

    def _storage(self):
        if self.config.storage:
            return self.config.storage
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.files.dir.mkdir(parents=True, exist_ok=True)
        if (self.files.dir / JOURNAL).is_symlink():
            raise SparsearchError(f"the Optuna journal {self.files.dir / JOURNAL} is a symbolic link; sparsearch "
                                  "reads and writes only its own files")
        _heal_journal(self.files.dir / JOURNAL)
        return JournalStorage(JournalFileBackend(str(self.files.dir / JOURNAL)))

    def _open(self, *, fresh: bool) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if fresh and not self.config.storage:
            (self.files.dir / JOURNAL).unlink(missing_ok=True)
        try:
            storage = self._storage()
            if not fresh and self.config.study_name not in optuna.get_all_study_names(storage):
                where = masked(self.config.storage) if self.config.storage else str(self.files.dir / JOURNAL)
                raise SparsearchError(f"the Optuna storage {where} holds no study {self.config.study_name!r} to "
                                      "resume; start a new run without --resume")
            self.study = optuna.create_study(
                storage=storage, study_name=self.config.study_name, direction="minimize",
                load_if_exists=not fresh,
            )
        except optuna.exceptions.DuplicatedStudyError:
            raise SparsearchError(
                f"study {self.config.study_name!r} already exists in {masked(self.config.storage)}; use --resume or "
                "another name"
            ) from None
        except (ImportError, SQLAlchemyError) as e:  # the database of --storage cannot be opened
            raise SparsearchError(f"cannot open the Optuna storage {masked(self.config.storage)}: "
                                  f"{masked(self.config.storage, first_line(e))}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # the journal holds something else
            raise SparsearchError(f"cannot read the Optuna journal {self.files.dir / JOURNAL} ({type(e).__name__}: "
                                  f"{first_line(e)}); start a new run without --resume") from None

    @property
    def _distributions(self) -> dict[str, BaseDistribution]:
        if self.config.budget_mode == "shift":
            return {u.name: FloatDistribution(0.0, 1.0) for u in self.space.units}
        return {u.name: IntDistribution(0, len(lv) - 1) for u, lv in zip(self.space.units, self.space.levels)}

    @property
    def _kernel_floors(self) -> dict[str, float] | None:
        """Each unit's least kernel width in its parameter's units (shift mode: ``kernel_floor``
        times the mean distance between the sparsities of its levels)."""
        steps = self.config.kernel_floor_steps
        if steps is None:
            return None
        return {u.name: steps * (lv[-1].sparsity - lv[0].sparsity) / (len(lv) - 1)
                for u, lv in zip(self.space.units, self.space.levels) if lv[-1].sparsity > lv[0].sparsity}

    def _genome(self, sampled: tuple, *, start: bool) -> Genome:
        """The genome scored for the ``sampled`` parameters (or, at step 0, the start genome)."""
        mode = self.config.budget_mode
        if mode == "constraint":
            return sampled
        if mode == "shift" and not start:
            genome = genome_of_preferences(self.space, self.budget, sampled)
            if self.budget.feasible(genome):
                return genome
            sampled = genome  # outside the band (a non-monotone cost table): repaired below
        return self.budget.repair(sampled, self.rng)

    def initialize(self) -> None:
        self._open(fresh=True)
        self.best_seen: tuple[list[int], float] | None = None

    def done(self) -> bool:
        return self.step_index >= self.config.trials

    def _step_trials(self, states: tuple[TrialState, ...]) -> list:
        return [t for t in self.study.get_trials(deepcopy=False, states=states)
                if t.user_attrs.get("step") == self.step_index]

    def _bounds(self, genome: Genome) -> dict[str, float]:
        """Optuna constraints (<= 0 is feasible): the cost above the limit, and below the band."""
        dense = self.budget.model.dense()
        cost = self.budget.cost(genome)
        return {"over_limit": (cost - self.budget.limit) / dense,
                "under_band": (self.budget.limit - self.budget.tolerance - cost) / dense}

    def step(self) -> dict[str, Any]:
        told = self._step_trials((TrialState.COMPLETE,))
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed driver
            _supersede(self.study, t, f"left running by an interrupted run; step {t.user_attrs.get('step')} was "
                                      "asked again")
        if told:  # scored and told before a kill, not yet checkpointed: replay it
            genome = self._genome(tuple(told[0].user_attrs["sampled"]), start=self.step_index == 0)
            return self._record(genome, told[0].value)
        if self.step_index == 0:  # the start genome, scored as the first trial
            sampled, trial = self.start_genome(), None
        else:
            self.study.sampler = _KnownSpaceTPESampler(
                self._distributions, seed=(self.seed * 1_000_003 + self.step_index) % 2**32,  # numpy's range
                n_startup_trials=self.config.startup_trials, n_ei_candidates=self.config.candidates,
                good_trials=self.config.good_set_cap, kernel_floors=self._kernel_floors,
            )
            trial = self.study.ask()
            trial.set_user_attr("step", self.step_index)
            if self.config.budget_mode == "shift":
                sampled = tuple(trial.suggest_float(u.name, 0.0, 1.0) for u in self.space.units)
            else:
                sampled = tuple(trial.suggest_int(u.name, 0, len(lv) - 1)
                                for u, lv in zip(self.space.units, self.space.levels))
        genome = self._genome(sampled, start=trial is None)
        attrs = {"step": self.step_index, "sampled": list(sampled), "genome": list(genome)}
        if self.config.budget_mode != "constraint" or self.budget.feasible(genome):
            value = self.fitness.evaluate([genome], self.config.stage)[0]
        else:
            value = self.config.penalty
        constraints = self._bounds(genome) if self.config.budget_mode == "constraint" else None
        params = preferences_of(self.space, genome) if self.config.budget_mode == "shift" else list(genome)
        if trial is not None and params == list(sampled):
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            for k, v in (constraints or {}).items():
                trial.set_constraint(k, v)
            self.study.tell(trial, value)
        else:  # tell the study what was scored: the scored (or start) genome as a complete trial
            self.study.add_trial(optuna.trial.create_trial(
                params={u.name: x for u, x in zip(self.space.units, params)}, distributions=self._distributions,
                value=value, user_attrs=attrs, constraints=constraints))
            if trial is not None:
                how = "its budget map" if self.config.budget_mode == "shift" else "the repair into the budget band"
                _supersede(self.study, trial, f"step {self.step_index} scored the genome that {how} gave for these "
                                              "parameters, told as its own complete trial")
        return self._record(genome, value)

    def _record(self, genome: Genome, value: float) -> dict[str, Any]:
        # the study's trial of this step carries the user attribute step (trial numbers also count
        # the superseded trials, so they are not part of the record)
        record: dict[str, Any] = {"value": value}
        if not self.budget.feasible(genome):
            record["infeasible"] = True
        elif self.best_seen is None or value < self.best_seen[1]:
            self.best_seen = (list(genome), value)
        return record

    def finish(self) -> None:
        final = self.final_stage
        if not self.config.finalists or self.config.stage >= final:
            return
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ranked = sorted((t for t in done if "step" in t.user_attrs and t.value < self.config.penalty),
                        key=lambda t: (t.value, t.number))
        genomes = [g for g in dict.fromkeys(tuple(t.user_attrs["genome"]) for t in ranked) if self.budget.feasible(g)]
        genomes = genomes[: self.config.finalists]
        if genomes:
            scores = self.fitness.evaluate(genomes, final)
            i = min(range(len(genomes)), key=lambda k: (scores[k], k))
            self.best_seen = (list(genomes[i]), scores[i])
            self.log(f"tpe: {len(genomes)} finalists scored on stage {final}; best {scores[i]:.5f}")

    @classmethod
    def planned_steps(cls, config) -> int:
        return config.trials

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
