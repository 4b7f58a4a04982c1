"""One-shot allocations: placing targets on ladders under a budget (hand-computed), and search
engines started from a baseline (OWL's and FLAP's scores on tiny models: tests/test_baselines.py)."""

import random

import pytest

from sparsearch.search.allocation import from_scores, from_sparsities
from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine
from sparsearch.search.space import Level, SearchSpace, Unit
from sparsearch.search.tpe import TPEConfig, TPEEngine
from tests.helpers.synthetic import SyntheticFitness, synthetic_space


def two_units() -> SearchSpace:
    """Two units of 400 parameters, ladders 0, 0.25, 0.5, 0.75, 1 (costs 400, 300, 200, 100, 0)."""
    lv = tuple(Level(i / 4, 400 - 100 * i) for i in range(5))
    return SearchSpace((Unit(0, "attn"), Unit(0, "mlp")), (lv, lv))


def test_from_sparsities_keeps_the_shape_of_the_targets():
    space = two_units()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, 0.0)  # exactly 400 kept
    # 0.2 and 0.8 snap to 0.25 and 0.75: 300 + 100 = 400 meets the limit with no shift
    assert from_sparsities(space, budget, [0.2, 0.8], random.Random(0)) == (1, 3)
    # targets averaging 0.3 are shifted up together until the budget holds: 0.45/0.65 -> 0.5/0.75 is
    # 300 kept, too few for an exact band, so the first shift that meets 400 is 0.25/0.75 or 0.5/0.5
    g = from_sparsities(space, budget, [0.2, 0.4], random.Random(0))
    assert budget.cost(g) == 400 and g in {(1, 3), (2, 2)}
    # the level nearest to each target is kept when the targets already meet the budget
    assert from_sparsities(space, Budget.from_sparsity(CostModel.params(space), 0.25, 0.0), [0.0, 0.5],
                           random.Random(0)) == (0, 2)


def test_from_scores_keeps_the_globally_best_groups():
    space = two_units()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, 0.0)
    # the 4 best of 8 groups are 5, 4, 3, 2: unit 0 keeps 3 of 4 (sparsity 0.25), unit 1 keeps 1 (0.75)
    scores = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.6, 0.7, 5.0]]
    assert from_scores(space, budget, scores, random.Random(0)) == (1, 3)
    # a unit whose groups all score below the threshold is removed
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, 0.0)
    assert from_scores(space, budget, [[5.0, 6.0, 7.0, 8.0], [0.1, 0.2, 0.3, 0.4]], random.Random(0)) == (0, 4)


def test_allocations_meet_the_budget_band_on_a_larger_space():
    space = synthetic_space(layers=6)
    rng = random.Random(3)
    for target in (0.2, 0.5, 0.8):
        budget = Budget.from_sparsity(CostModel.params(space), target, 0.02)
        g1 = from_sparsities(space, budget, [rng.random() for _ in space.units], random.Random(0))
        g2 = from_scores(space, budget, [[rng.gauss(0, 1) for _ in range(8)] for _ in space.units], random.Random(0))
        assert budget.feasible(g1) and budget.feasible(g2)


def test_engines_start_from_a_given_genome(tmp_path):
    space = synthetic_space(layers=4)
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, 0.02)
    start = from_sparsities(space, budget, [0.2 if u.kind == "attn" else 0.7 for u in space.units], random.Random(0))
    assert budget.feasible(start) and start != budget.repair(space.uniform(0.5), random.Random(0))
    fit = SyntheticFitness(space)
    evo = EvolutionEngine(space, budget, fit, EvolutionConfig(generations=0), run_dir=str(tmp_path / "evo"),
                          starts={"given": start}, log=None)
    result = evo.run()
    assert result.best_genome == start and result.best_fitness == pytest.approx(fit.true(start))
    assert result.start_scores == {"given": result.best_fitness} and result.evaluations == 1
    tpe = TPEEngine(space, budget, fit, TPEConfig(trials=1), run_dir=str(tmp_path / "tpe"), starts={"given": start},
                    log=None)
    assert tpe.run().best_genome == start  # the enqueued first trial
    assert tpe.study.trials[0].user_attrs["genome"] == list(start)
    with pytest.raises(Exception, match="outside its ladder"):
        EvolutionEngine(space, budget, fit, EvolutionConfig(), run_dir=str(tmp_path / "x"),
                        starts={"bad": (99,) * len(space.units)})


def test_the_best_of_several_starts_is_where_a_search_starts(tmp_path):
    space = synthetic_space(layers=4)
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, 0.02)
    fit = SyntheticFitness(space)
    good = from_sparsities(space, budget, [0.2 if u.layer % 2 == 0 else 0.7 for u in space.units], random.Random(0))
    bad = from_sparsities(space, budget, [0.7 if u.layer % 2 == 0 else 0.2 for u in space.units], random.Random(0))
    assert fit.true(good) < fit.true(bad)
    evo = EvolutionEngine(space, budget, fit, EvolutionConfig(generations=0), run_dir=str(tmp_path / "evo"),
                          starts={"bad": bad, "good": good}, log=None)
    result = evo.run()
    assert result.best_genome == good
    assert result.start_scores == pytest.approx({"bad": fit.true(bad), "good": fit.true(good)})
