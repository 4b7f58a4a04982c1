"""The synthetic benchmark's hard problem (bench/search_synthetic.py): its dynamic program is the
exact optimum (against every feasible genome of small instances), the problem is not separable
(the knapsack on exact one-unit damages misses that optimum), and its noise is a batch's."""

import itertools
import random

import pytest

from bench.search_synthetic import CountingFitness, HardProblem
from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.knapsack import solve


def _instance(layers: int, seed: int):
    problem = HardProblem(seed, layers=layers)
    space = problem.space()
    return problem, space, Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_dynamic_program_finds_the_best_feasible_genome(seed):
    problem, space, budget = _instance(2, seed)
    best = min(problem.value(space, g) for g in itertools.product(*[range(len(lv)) for lv in space.levels])
               if budget.feasible(g))
    assert problem.optimum(space, budget) == pytest.approx(best, rel=1e-12)


def test_the_hard_problem_is_not_separable():
    """At 40 layers the knapsack on exact one-unit damages is more than 1% above the optimum: the
    joint damage of neighbouring MLPs is invisible to one-unit probes."""
    problem, space, budget = _instance(40, 0)
    damage = [[problem.damage(u, lv.sparsity) for lv in levels] for u, levels in zip(space.units, space.levels)]
    separable = problem.value(space, solve(space, budget, damage))
    optimum = problem.optimum(space, budget)
    assert separable > optimum * 1.01
    assert {len(lv) for lv in space.levels} == {9, 17} and len(space.units) == 80


def test_noise_is_fixed_by_genome_and_batch():
    problem, space, budget = _instance(3, 0)
    trace: list[float] = []
    fit = CountingFitness(problem, space, budget, trace, noise=0.01)
    g = budget.repair(space.uniform(0.5), random.Random(0))
    assert budget.feasible(g)
    a, b = fit.evaluate_many([g, g], 0, sample=1), fit.evaluate_many([g], 0, sample=2)
    assert a[0] == a[1] != b[0]
    assert abs(a[0] / problem.value(space, g) - 1) < 0.05  # 1% noise: within 5 sigma
    assert trace == [problem.value(space, g)] * 3  # the trace keeps the noise-free value
