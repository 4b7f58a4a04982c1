"""A search's result is its validation-best candidate; patience ends a search that stopped improving."""

import dataclasses

import pytest

from tests.helpers.synthetic import SyntheticFitness, synthetic_space
from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine
from sparsearch.search.fitness import VALIDATION


class ValidatedFitness(SyntheticFitness):
    """The synthetic fitness, plus a validation split that disagrees with it: validation prefers the
    genome whose first unit is sparser, the stages do not see that term."""

    validates = True

    def __init__(self, space, **kw):
        super().__init__(space, **kw)
        self.validated = []

    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        if stage != VALIDATION:
            return super().evaluate_many(genomes, stage, on_result, sample)
        out = []
        for i, g in enumerate(genomes):
            self.validated.append(tuple(g))
            out.append(self.true(g) - 10.0 * g[0])
            if on_result:
                on_result(i, out[-1])
        return out


def _engine(tmp_path, fitness, patience=0, generations=8):
    space = fitness.space
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, 0.02)
    return EvolutionEngine(space, budget, fitness, EvolutionConfig(generations=generations, offspring=6),
                           run_dir=str(tmp_path), seed=0, log=None, patience=patience)


def test_the_result_is_the_validation_best_candidate(tmp_path):
    fit = ValidatedFitness(synthetic_space())
    engine = _engine(tmp_path, fit)
    result = engine.run()
    cands = result.validation["candidates"]
    names = [c["name"] for c in cands]
    assert names[0] == "uniform" and all(n == "final" or n.startswith("step ") for n in names[1:])
    assert len(names) >= 2  # the search moved: its steps' bests are candidates too
    best = min(cands, key=lambda c: c["kl"])
    assert result.validation["chosen"] == best["name"] and list(result.best_genome) == best["genome"]
    # every candidate's validation score is the validation split's, not a stage's
    for c in cands:
        assert c["kl"] == pytest.approx(fit.true(c["genome"]) - 10.0 * c["genome"][0])
    # the result's fitness is the chosen genome's on the final stage
    assert result.best_fitness == fit.evaluate_many([result.best_genome], 2)[0]
    # each genome is scored on validation once (the evaluation cache)
    assert len(fit.validated) == len(set(fit.validated))


def test_without_a_validation_split_the_result_is_the_search_best(tmp_path):
    fit = SyntheticFitness(synthetic_space())
    result = _engine(tmp_path, fit).run()
    assert result.validation is None


class FlatValidation(ValidatedFitness):
    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        if stage != VALIDATION:
            return super().evaluate_many(genomes, stage, on_result, sample)
        out = [1.0 for _ in genomes]  # nothing ever improves on validation
        for i, s in enumerate(out):
            if on_result:
                on_result(i, s)
        return out


def test_patience_stops_a_search_that_does_not_improve_on_validation(tmp_path):
    engine = _engine(tmp_path / "a", FlatValidation(synthetic_space()), patience=3, generations=20)
    result = engine.run()
    assert engine.step_index == 3  # three steps without a better validation score
    assert result.validation["chosen"] == "uniform"  # the first of equal scores
    # resumed from its checkpoint, it stops at the same step with the same result
    again = _engine(tmp_path / "a", FlatValidation(synthetic_space()), patience=3, generations=20)
    assert dataclasses.replace(again.run(resume=True), wall_time_s=0) == dataclasses.replace(result, wall_time_s=0)
    # patience 0: every generation runs
    full = _engine(tmp_path / "b", FlatValidation(synthetic_space()), patience=0, generations=5)
    full.run()
    assert full.step_index == 5
