"""The budget-spending map from per-unit sparsity preferences to a genome (TPE's default parametrisation)."""

import random

import pytest

from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.preference import genome_of_preferences, preferences_of
from sparsearch.search.space import Level, SearchSpace, Unit
from tests.helpers.synthetic import synthetic_space


def _two_units():
    """Two units with levels at sparsity 0, 1/2, 1 costing 2, 1, 0; half the cost removed, no slack."""
    lv = (Level(0.0, 2), Level(0.5, 1), Level(1.0, 0))
    space = SearchSpace((Unit(0, "attn"), Unit(0, "mlp")), (lv, lv))
    return space, Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.0)


@pytest.mark.parametrize("prefs, genome", [((0.9, 0.1), (2, 0)), ((0.1, 0.9), (0, 2)), ((0.5, 0.5), (1, 1)),
                                           ((0.0, 0.0), (1, 1)), ((1.0, 0.6), (1, 1)), ((0.3, 0.2), (1, 1))])
def test_hand_computed_genomes(prefs, genome):
    """(0.9, 0.1): shifted down by up to 0.15 the first unit stays at sparsity 1 and the second at 0 (cost 2,
    the limit); shifted further, the first becomes denser and the cost exceeds the limit. (0.0, 0.0): both must
    move, the shift 0.25 puts both at 1/2. (0.3, 0.2): the first reaches 1/2 at shift 0.2 (cost 3, over the
    limit), the second at 0.05 more (cost 2). (1.0, 0.6): shifted down by 0.35 both are at 1/2 (cost 2), reached
    before (2, 0) (shift -0.25), which costs as much: the smallest shift wins."""
    space, budget = _two_units()
    assert genome_of_preferences(space, budget, prefs) == genome


def test_every_preference_vector_maps_into_the_band():
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    rng = random.Random(0)
    for _ in range(300):
        prefs = [rng.random() ** rng.choice((0.3, 1, 3)) for _ in space.units]
        genome = genome_of_preferences(space, budget, prefs)
        assert budget.feasible(genome), (prefs, genome, budget.cost(genome))


def test_order_of_preferences_is_the_order_of_sparsity_among_alike_units():
    """Units with the same ladder and costs end up no denser than any unit they are preferred sparser than
    (the shift and the band fill move all of them alike, one level at most apart)."""
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.4, tolerance=0.02)
    rng = random.Random(1)
    mlps = [i for i, u in enumerate(space.units) if u.kind == "mlp"]
    for _ in range(100):
        prefs = [rng.random() for _ in space.units]
        genome = genome_of_preferences(space, budget, prefs)
        for i in mlps:
            for j in mlps:
                if prefs[i] > prefs[j]:
                    assert genome[i] >= genome[j] - 1


def test_a_genome_in_the_band_without_slack_is_its_own_preferences():
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    genome = space.uniform(0.5)
    assert budget.cost(genome) == budget.limit  # every unit at 1/2: no slack to spend
    assert genome_of_preferences(space, budget, preferences_of(space, genome)) == genome


def test_the_slack_is_spent():
    """A genome below the band comes back in it: the budget is spent by making units denser."""
    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.3, tolerance=0.01)
    genome = genome_of_preferences(space, budget, preferences_of(space, space.uniform(0.5)))
    assert budget.feasible(genome) and all(g <= u for g, u in zip(genome, space.uniform(0.5)))
