"""Contract tests shared by every engine, on a synthetic fitness with a known non-uniform optimum."""

import json

import pytest

from search.budget import Budget, CostModel
from search.errors import SparsearchError
from search.evolution import EvolutionConfig, EvolutionEngine
from search.nsga2 import NSGA2Config, NSGA2Engine
from search.tpe import TPEConfig, TPEEngine
from synthetic import SyntheticFitness, synthetic_space

ENGINES = {
    "evolution": (EvolutionEngine, EvolutionConfig(generations=12, offspring=8)),
    "nsga2": (NSGA2Engine, NSGA2Config(population=24, generations=12)),
    "nsga2-dc": (NSGA2Engine, NSGA2Config(population=8, generations=4, blocks=3)),
    "tpe": (TPEEngine, TPEConfig(trials=40, startup_trials=8)),
    "tpe-constraint": (TPEEngine, TPEConfig(trials=40, startup_trials=8, budget_mode="constraint")),
}


def _engine(name, tmp_path, seed=0, fitness=None, sub="run"):
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    cls, cfg = ENGINES[name]
    fitness = fitness or SyntheticFitness(space)
    return cls(space, budget, fitness, cfg, run_dir=str(tmp_path / sub), seed=seed, log=None), fitness


@pytest.mark.parametrize("name", ENGINES)
def test_respects_budget_and_beats_uniform(name, tmp_path):
    engine, fit = _engine(name, tmp_path)
    result = engine.run()
    assert engine.budget.feasible(result.best_genome)
    uniform = engine.start_genome()
    assert fit.true(result.best_genome) < 0.8 * fit.true(uniform), (result.best_genome, uniform)
    assert result.evaluations == len({(tuple(r["genome"]), r["stage"]) for r in engine.files.evaluations()})
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
@pytest.mark.parametrize("kill_at", [1, 7, 23])
def test_survives_kill_and_resume(name, kill_at, tmp_path):
    reference = _engine(name, tmp_path, sub="ref")[0].run()
    space = synthetic_space()
    engine, _ = _engine(name, tmp_path, fitness=SyntheticFitness(space, fail_after=kill_at))
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
    from search.space import Level, SearchSpace, Unit

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


def test_tpe_study_is_a_readable_optuna_study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    engine, _ = _engine("tpe", tmp_path)
    engine.run()
    study = optuna.load_study(study_name="sparsearch",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "run" / "optuna.log"))))
    assert len(study.trials) == 40
    first = study.trials[0]
    assert tuple(first.params[u.name] for u in engine.space.units) == engine.start_genome()
    assert json.dumps(first.user_attrs["genome"])


def test_tpe_with_sqlite_storage(tmp_path):
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = TPEConfig(trials=12, startup_trials=4, storage=url)
    TPEEngine(space, budget, SyntheticFitness(space), cfg, run_dir=str(tmp_path / "r"), log=None).run()
    with pytest.raises(SparsearchError, match="already exists"):
        TPEEngine(space, budget, SyntheticFitness(space), cfg, run_dir=str(tmp_path / "r2"), log=None).run()
