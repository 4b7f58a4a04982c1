"""Probe + exact allocation: the multiple-choice knapsack against brute force and a DP."""

import itertools
import random

import pytest

from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.knapsack import (KnapsackAllocation, KnapsackConfig, context_damages, damages, probes,
                                      probes_around, solve)
from sparsearch.search.space import Level, SearchSpace, Unit
from tests.helpers.synthetic import SyntheticFitness, synthetic_space


def _space(costs):
    units = tuple(Unit(i // 2, ("attn", "mlp")[i % 2]) for i in range(len(costs)))
    levels = tuple(tuple(Level(j / (len(c) - 1), p) for j, p in enumerate(c)) for c in costs)
    return SearchSpace(units, levels)


def test_solve_is_the_brute_force_optimum():
    rng = random.Random(0)
    for trial in range(20):
        costs = [[100, 70, 40, 0], [300, 200, 100, 0], [100, 50, 0], [300, 150, 0]]
        space = _space(costs)
        damage = [[0.0] + sorted(rng.uniform(0, 5) for _ in range(len(c) - 1)) for c in costs]
        budget = Budget.from_sparsity(CostModel.params(space), rng.uniform(0.2, 0.7), tolerance=0.05)
        best = min((g for g in itertools.product(*[range(len(c)) for c in costs]) if budget.feasible(g)),
                   key=lambda g: sum(d[l] for d, l in zip(damage, g)))
        got = solve(space, budget, damage)
        assert budget.feasible(got)
        assert sum(d[l] for d, l in zip(damage, got)) == pytest.approx(sum(d[l] for d, l in zip(damage, best)))


def test_probes_score_each_unit_alone_and_damages_subtract_the_dense_score():
    space = _space([[10, 5, 0], [20, 0]])
    assert probes(space) == [(0, 0), (1, 0), (2, 0), (0, 1)]
    assert damages(space, [0.5, 1.5, 2.5, 4.0]) == [[0.0, 1.0, 2.0], [0.0, 3.5]]


def test_knapsack_engine_is_exact_on_a_separable_fitness(tmp_path):
    """The synthetic fitness is separable (a sum over units): the knapsack allocation is optimal."""
    space = synthetic_space(layers=3)
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    fit = SyntheticFitness(space, survivors=(1,), noise=(0.0,))
    engine = KnapsackAllocation(space, budget, fit, KnapsackConfig(), run_dir=str(tmp_path), log=None)
    result = engine.run()
    best = min((g for g in itertools.product(*[range(len(l)) for l in space.levels]) if budget.feasible(g)),
               key=fit.true)
    assert fit.true(result.best_genome) == pytest.approx(fit.true(best))
    assert result.evaluations == len(probes(space)) + 1  # the probes, and the allocation itself
    assert result.evaluations == sum(KnapsackAllocation.planned_evaluations(KnapsackConfig(), (1,), space).values())


def test_an_excluded_option_is_never_chosen():
    space = _space([[100, 50, 0], [100, 50, 0]])
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.0)
    # the cheapest way to half is one unit removed, but removing unit 0 is excluded
    assert solve(space, budget, [[0.0, 5.0, float("inf")], [0.0, 5.0, 1.0]]) == (0, 2)


def test_probes_around_and_context_damages_by_hand():
    space = _space([[10, 5, 0], [20, 10, 5, 0]])
    around = probes_around(space, (1, 1), radius=1)
    assert around == [(0, 1), (2, 1), (1, 0), (1, 2)]
    damage = context_damages(space, (1, 1), around, 1.0, [0.5, 3.0, 0.25, 2.0])
    assert damage == [[-0.5, 0.0, 2.0], [-0.75, 0.0, 1.0, float("inf")]]


class Compounding(SyntheticFitness):
    """Damage compounds between neighbouring units: pruning two neighbours costs more than the sum."""

    def true(self, genome):
        s = [lv[g].sparsity for lv, g in zip(self.space.levels, genome)]
        return super().true(genome) + 6.0 * sum(a * b for a, b in zip(s, s[1:]))


def test_rounds_around_the_allocation_improve_it_on_a_compounding_fitness(tmp_path):
    space = synthetic_space(layers=4)
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    results = {}
    for rounds in (0, 3):
        fit = Compounding(space, survivors=(1,), noise=(0.0,))
        engine = KnapsackAllocation(space, budget, fit, KnapsackConfig(knapsack_rounds=rounds),
                                    run_dir=str(tmp_path / str(rounds)), log=None)
        results[rounds] = (engine.run(), engine.starts, fit)
    (plain, _, fit), (refined, starts, _) = results[0], results[3]
    assert fit.true(refined.best_genome) < fit.true(plain.best_genome)
    assert budget.feasible(refined.best_genome)
    # every accepted round is a start of its own, each better than the one before
    assert list(starts)[0] == "knapsack" and len(starts) >= 2
    scores = [fit.true(g) for g in starts.values()]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert refined.evaluations <= sum(KnapsackAllocation.planned_evaluations(
        KnapsackConfig(knapsack_rounds=3), (1,), space).values())


def test_rounds_stop_at_once_on_a_separable_fitness(tmp_path):
    space = synthetic_space(layers=3)
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    fit = SyntheticFitness(space, survivors=(1,), noise=(0.0,))
    engine = KnapsackAllocation(space, budget, fit, KnapsackConfig(knapsack_rounds=3), run_dir=str(tmp_path), log=None)
    engine.run()
    assert list(engine.starts) == ["knapsack"]  # the context damages of a sum are its damages: the same optimum
