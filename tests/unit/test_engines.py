"""Contract tests shared by every engine, on a synthetic fitness with a known non-uniform optimum."""

import json
import warnings

import numpy as np
import pytest

from sparsearch.search.budget import Budget, CostModel
from sparsearch.base.errors import ConfigError, SparsearchError
from sparsearch.search.registry import ENGINES as REGISTRY, make_engine
from sparsearch.search.tpe import TPEConfig, TPEEngine, good_set_size, kernel_widths
from sparsearch.search.tyr import centred_ladder
from tests.helpers.synthetic import (SyntheticFitness, make_budget as _make_budget, quick_config, search_engines,
                                     synthetic_extras, synthetic_space)

# every registered search engine (QUICK's settings keep it short), and variants of some: name -> (engine, settings)
VARIANTS = {
    "nsga2-dc": ("nsga2", dict(population=8, generations=4, blocks=3)),
    "tpe-repair": ("tpe", dict(budget_mode="repair")),
    "tpe-constraint": ("tpe", dict(budget_mode="constraint")),
}
ENGINES = {**{name: (name, {}) for name in search_engines()}, **VARIANTS}


def _engine(name, tmp_path, seed=0, fitness=None, sub="run", fail_after=None):
    space = synthetic_space()
    engine_name, settings = ENGINES[name]
    counter = {"calls": 0}
    fitness = fitness or SyntheticFitness(space, fail_after=fail_after, counter=counter)
    engine = make_engine(engine_name, space, _make_budget(space), fitness, quick_config(engine_name, **settings),
                         run_dir=str(tmp_path / sub), seed=seed, log=None,
                         **synthetic_extras(engine_name, fail_after=fail_after, counter=fitness.counter))
    return engine, fitness


def test_the_tables_are_the_registrys():
    assert {"evolution", "nsga2", "tpe", "tyr"} <= set(search_engines()) <= set(REGISTRY)
    assert all(REGISTRY[engine].engine.name == engine for engine, _ in ENGINES.values())


@pytest.mark.parametrize("name", ENGINES)
def test_respects_budget_and_beats_uniform(name, tmp_path):
    engine, fit = _engine(name, tmp_path)
    uniform = engine.space.uniform(0.5)
    result = engine.run()
    assert engine.budget.feasible(result.best_genome)
    final = engine.fitness.fitness  # Týr's last round has its own space and fitness
    assert final.true(result.best_genome) < 0.8 * fit.true(uniform), (result.best_genome, uniform)
    assert result.evaluations == len({(r["space"], tuple(r["genome"]), r["stage"], r.get("sample", 0))
                                      for r in engine.files.evaluations()})
    history = engine.files.history()
    assert len(history) >= 1 and all("best_fitness" in r for r in history)


@pytest.mark.parametrize("name", ENGINES)
def test_reproducible_with_seed(name, tmp_path):
    a = _engine(name, tmp_path, sub="a")[0].run()
    b = _engine(name, tmp_path, sub="b")[0].run()
    c = _engine(name, tmp_path, sub="c", seed=1)[0].run()
    assert a.best_genome == b.best_genome and a.best_fitness == b.best_fitness
    assert (a.best_genome, a.evaluations) != (c.best_genome, c.evaluations)


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("when", ["first", "early", "late"])
def test_survives_kill_and_resume(name, when, tmp_path):
    reference = _engine(name, tmp_path, sub="ref")[0].run()
    n = reference.evaluations
    kill_at = {"first": 1, "early": max(2, n // 3), "late": n - 1}[when]
    engine, _ = _engine(name, tmp_path, fail_after=kill_at)
    with pytest.raises(KeyboardInterrupt):
        engine.run()
    done_before = len(engine.files.evaluations())
    assert done_before == kill_at  # every completed evaluation is on disk
    engine, fit = _engine(name, tmp_path)
    result = engine.run(resume=True)
    assert result.best_genome == reference.best_genome
    assert result.best_fitness == reference.best_fitness
    assert result.evaluations == reference.evaluations
    # nothing completed before the kill was evaluated again
    assert fit.calls == reference.evaluations - done_before
    steps = [r["step"] for r in engine.files.history()]
    assert steps == list(range(1, len(steps) + 1))


def test_resume_refuses_another_engine(tmp_path):
    engine, _ = _engine("evolution", tmp_path)
    engine.run()
    other, _ = _engine("nsga2", tmp_path)
    with pytest.raises(SparsearchError, match="cannot resume it as nsga2"):
        other.run(resume=True)


def test_infeasible_budgets_are_clear_errors():
    model = CostModel.params(synthetic_space())
    with pytest.raises(SparsearchError, match="infeasible budget"):
        Budget.from_sparsity(model, 1.2)
    with pytest.raises(SparsearchError, match="infeasible budget"):
        Budget(model, model.dense() * 1.5, 0.0)
    with pytest.raises(SparsearchError, match="infeasible budget"):
        Budget(model, -1.0, 0.0)


def test_cost_models_by_hand():
    space = synthetic_space(layers=1, attn_levels=3, mlp_levels=3)
    p = CostModel.params(space)
    assert p.table == ((400.0, 200.0, 0.0), (800.0, 400.0, 0.0)) and p.cost((1, 2)) == 200.0
    from sparsearch.search.space import Level, SearchSpace, Unit

    space = SearchSpace((Unit(0, "attn"),), ((Level(0.0, 100, {"heads": 4}), Level(1.0, 0, {"heads": 0})),))
    f = CostModel.flops(space, head_dim=8, context=9)
    assert f.table == ((2 * 100 + 4 * 4 * 8 * 5.0, 0.0),)
    lat = CostModel.latency(space, {"L000.attn": [2.5, 0.0]})
    assert lat.cost((0,)) == 2.5
    with pytest.raises(SparsearchError, match="no entry for unit L000.attn"):
        CostModel.latency(space, {})


def test_repair_lands_in_the_band():
    import random

    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.4, tolerance=0.01)
    rng = random.Random(0)
    for g in ((0,) * 12, tuple(len(lv) - 1 for lv in space.levels)):
        assert budget.feasible(budget.repair(g, rng))


def _study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="sparsearch",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "run" / "optuna.log"))))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs["step"] for t in complete) == list(range(40))  # one scored trial per step
    assert json.dumps(complete[0].user_attrs["genome"])
    return study, complete


def test_tpe_study_is_told_the_scored_genome_and_each_sampled_point_maps_to_it(tmp_path):
    import optuna

    from sparsearch.search.preference import genome_of_preferences, preferences_of

    engine, _ = _engine("tpe", tmp_path)
    engine.run()
    study, complete = _study(tmp_path)
    assert tuple(complete[0].user_attrs["genome"]) == engine.start_genome()  # step 0: the start genome
    # every complete trial's parameters are its scored genome's level sparsities, in the band
    for t in complete:
        genome = tuple(t.user_attrs["genome"])
        assert [t.params[u.name] for u in engine.space.units] == preferences_of(engine.space, genome)
        assert engine.budget.feasible(genome)
    # every later step sampled preferences (its failed trial, which TPE ignores) that map to that genome
    failed = {t.user_attrs["step"]: t for t in study.get_trials(states=(optuna.trial.TrialState.PRUNED,))}
    assert sorted(failed) == list(range(1, 40))
    for t in complete[1:]:
        sampled = [failed[t.user_attrs["step"]].params[u.name] for u in engine.space.units]
        assert sampled == t.user_attrs["sampled"]
        assert genome_of_preferences(engine.space, engine.budget, sampled) == tuple(t.user_attrs["genome"])
    assert len({tuple(t.user_attrs["genome"]) for t in complete}) > 20


def test_tpe_repair_mode_tells_the_repaired_genome(tmp_path):
    import optuna

    engine, _ = _engine("tpe-repair", tmp_path)
    engine.run()
    study, complete = _study(tmp_path)
    assert tuple(complete[0].params[u.name] for u in engine.space.units) == engine.start_genome()
    # TPE is told what was scored: every complete trial's parameters are the scored, in-band genome
    for t in complete:
        genome = tuple(t.params[u.name] for u in engine.space.units)
        assert genome == tuple(t.user_attrs["genome"]) and engine.budget.feasible(genome)
    # a sampled genome outside the band was repaired: its own trial failed, which TPE ignores
    failed = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert failed and all(not engine.budget.feasible(tuple(t.params[u.name] for u in engine.space.units))
                          for t in failed)


def test_tpe_result_is_the_best_finalist_on_the_final_stage(tmp_path):
    engine, fitness = _engine("tpe", tmp_path)
    result = engine.run()
    trials = sorted((t for t in engine.study.trials if t.value is not None and t.value < 1e6),
                    key=lambda t: (t.value, t.number))
    top = list(dict.fromkeys(tuple(t.user_attrs["genome"]) for t in trials))[:4]
    assert result.best_genome in top
    # the final stage is noise-free: the reported fitness is the genome's true value, the best of the four
    assert result.best_fitness == pytest.approx(fitness.true(result.best_genome))
    assert result.best_fitness == pytest.approx(min(fitness.true(g) for g in top))


def test_tpe_with_sqlite_storage(tmp_path):
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = TPEConfig(trials=12, startup_trials=4, storage=url)
    TPEEngine(space, budget, SyntheticFitness(space), cfg, run_dir=str(tmp_path / "r"), log=None).run()
    with pytest.raises(SparsearchError, match="already exists"):
        TPEEngine(space, budget, SyntheticFitness(space), cfg, run_dir=str(tmp_path / "r2"), log=None).run()


def test_tyr_rounds_refine_ladders_around_the_best():
    lad = centred_ladder(0.5, 0.0625, 9)
    assert lad.sparsities == (0.0, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.5625, 0.625, 0.6875, 0.75, 1.0)
    edge = centred_ladder(0.05, 0.03125, 9)  # shifted to stay inside [0, 1]
    assert edge.sparsities[:2] == (0.0, 0.03125) and len(edge) == 10


def test_tyr_final_round_is_finer_and_no_worse(tmp_path):
    engine, _ = _engine("tyr", tmp_path)
    result = engine.run()
    history = engine.files.history()
    assert [r.get("step_size") for r in history if "step_size" in r] == [0.0625, 0.03125]
    round0_best = [r["best_fitness"] for r in history if r["round"] == 0][-1]
    assert result.best_fitness <= round0_best + 0.02  # noise of the synthetic fitness at the last stage is 0
    for lv in engine.space.levels:  # the last round's ladders: 0, nine levels 1/32 apart, 1
        inner = [l.sparsity for l in lv[1:-1]]
        assert {round(b - a, 8) for a, b in zip(inner, inner[1:])} <= {0.03125}


@pytest.mark.parametrize("name", [n for n in ENGINES if not REGISTRY[ENGINES[n][0]].extras] + ["knapsack"])
def test_a_unit_kept_dense_is_never_pruned(name, tmp_path):
    """A servable supernet offers its first attention only dense: every engine keeps it (Týr,
    which refines every ladder, refuses a servable supernet)."""
    space = synthetic_space().keep_dense(["L000.attn"])
    assert [len(lv) for lv in space.levels[:2]] == [1, 9] and space.uniform(0.5)[0] == 0
    engine_name, settings = ENGINES.get(name, (name, {}))
    engine = make_engine(engine_name, space, _make_budget(space), SyntheticFitness(space),
                         quick_config(engine_name, **settings), run_dir=str(tmp_path), seed=0, log=None)
    result = engine.run()
    assert engine.budget.feasible(result.best_genome)
    genomes = [r["genome"] for r in engine.files.evaluations()]
    assert len(genomes) > 1 and all(g[0] == 0 for g in genomes)


def test_keep_dense_refuses_unknown_units():
    with pytest.raises(SparsearchError, match="no units L099.attn"):
        synthetic_space().keep_dense(["L099.attn"])


def test_tpe_samples_with_its_candidate_count_and_good_set_cap(tmp_path, monkeypatch):
    import optuna

    seen = []
    original = optuna.samplers.TPESampler.__init__

    def spy(self, **kwargs):
        if "seed" in kwargs:  # the engine's per-step samplers (not the study's default one)
            gamma = kwargs["gamma"]
            seen.append((kwargs.get("n_ei_candidates"), gamma(5), gamma(31), gamma(1000)))
        original(self, **kwargs)

    monkeypatch.setattr(optuna.samplers.TPESampler, "__init__", spy)
    space = synthetic_space()
    cfg = TPEConfig(trials=6, startup_trials=2, ei_candidates=7, good_trials=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's deprecation warning for gamma is not shown to users
        TPEEngine(space, _make_budget(space), SyntheticFitness(space), cfg, run_dir=str(tmp_path / "run"), seed=0,
                  log=None).run()
    # steps 1..5 sample; the good set is 10% of the trials rounded up (1 of 5, 4 of 31), at most 3
    assert len(seen) == 5 and set(seen) == {(7, 1, 3, 3)}
    assert TPEConfig().candidates == 128 and TPEConfig(budget_mode="constraint").candidates == 24
    assert TPEConfig().good_set_cap == 10 and TPEConfig(budget_mode="repair").good_set_cap == 25
    assert good_set_size(31, 25) == 4 and good_set_size(1000, 10) == 10 and good_set_size(1000, 25) == 25
    with pytest.raises(ConfigError, match="ei_candidates"):
        TPEConfig(ei_candidates=-1)
    with pytest.raises(ConfigError, match="good_trials"):
        TPEConfig(good_trials=-1)


def test_kernel_widths_by_hand():
    # sorted neighbours: the outermost use their inner gap, the others the larger of their two gaps
    assert np.allclose(kernel_widths(np.array([0.5, 0.25, 0.25]), 0.0, 1.0, 0.05), [0.25, 0.05, 0.25])
    # Optuna's least width for 3 observations is 1/5; a floor above it changes nothing
    assert np.allclose(kernel_widths(np.array([0.5, 0.25, 0.25]), 0.0, 1.0, 1.0), [0.25, 0.2, 0.25])
    assert np.allclose(kernel_widths(np.array([0.3]), 0.0, 1.0, 0.05), [0.7])  # one kernel: to the farther end
    assert np.allclose(kernel_widths(np.array([0.0, 1.0]), 0.0, 1.0, 0.05), [1.0, 1.0])  # at most the range
    assert kernel_widths(np.array([]), 0.0, 1.0, 0.05).shape == (0,)


@pytest.mark.skipif(int(__import__("optuna").__version__.split(".")[0]) < 5,
                    reason="Optuna 4's multivariate TPE uses one width for all kernels")
def test_level_kernels_match_optunas_above_its_floor_and_are_narrower_below():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator

    from sparsearch.search.tpe import _LevelKernelEstimator

    rng = np.random.default_rng(0)
    space = {"a": FloatDistribution(0.0, 1.0), "b": FloatDistribution(0.0, 1.0)}
    obs = {"a": rng.choice([0.25, 0.375, 0.5], 10), "b": rng.random(10)}
    params = optuna.samplers.TPESampler()._parzen_estimator_parameters
    optuna_sigmas = [d.sigma for d in _ParzenEstimator(obs, space, params)._mixture_distribution.distributions]
    same = _LevelKernelEstimator(obs, space, params, floors={"a": 0.5, "b": 0.5})
    assert all(np.allclose(d.sigma, s) for d, s in zip(same._mixture_distribution.distributions, optuna_sigmas))
    narrow = _LevelKernelEstimator(obs, space, params, floors={"a": 0.05})
    a, b = narrow._mixture_distribution.distributions
    assert np.allclose(b.sigma, optuna_sigmas[1])  # a parameter without a floor keeps Optuna's kernels
    assert a.sigma[-1] == 1.0 and np.allclose(a.mu, same._mixture_distribution.distributions[0].mu)  # the prior
    assert np.allclose(a.sigma[:-1], kernel_widths(obs["a"], 0.0, 1.0, 0.05))
    assert a.sigma[:-1].min() == pytest.approx(0.05) and optuna_sigmas[0][:-1].min() == pytest.approx(1 / 12)


def test_tpe_shift_mode_floors_its_kernels_in_level_steps(tmp_path, monkeypatch):
    from sparsearch.search import tpe

    seen = []
    original = tpe._LevelKernelEstimator.__init__

    def spy(self, observations, search_space, parameters, predetermined_weights=None, *, floors):
        seen.append(dict(floors))
        original(self, observations, search_space, parameters, predetermined_weights, floors=floors)

    monkeypatch.setattr(tpe._LevelKernelEstimator, "__init__", spy)
    space = synthetic_space()
    steps = {u.name: (lv[-1].sparsity - lv[0].sparsity) / (len(lv) - 1) for u, lv in zip(space.units, space.levels)}
    for cfg, floor in ((TPEConfig(trials=4, startup_trials=1), 0.4), (TPEConfig(trials=4, startup_trials=1, kernel_floor=0.25), 0.25),
                       (TPEConfig(trials=4, startup_trials=1, budget_mode="repair"), None)):
        seen.clear()
        TPEEngine(space, _make_budget(space), SyntheticFitness(space), cfg, run_dir=str(tmp_path / str(floor)), seed=0,
                  log=None).run()
        if floor is None:  # repair and constraint keep Optuna's kernels
            assert seen == []
        else:  # steps 1-3 (after one startup trial, the start) model the trials: l(x) and g(x) each
            assert len(seen) == 6 and all(f == pytest.approx({k: floor * v for k, v in steps.items()}) for f in seen)
    assert TPEConfig().kernel_floor_steps == 0.4 and TPEConfig(budget_mode="constraint").kernel_floor_steps is None
    with pytest.raises(ConfigError, match="kernel_floor"):
        TPEConfig(kernel_floor=-0.1)
    with pytest.raises(ConfigError, match="kernel_floor"):
        TPEConfig(kernel_floor=0.3, budget_mode="repair")
