"""Wall time per phase: nested phases are exclusive, validation scoring counts as selection."""

import itertools

import pytest

from sparsearch.launch import phases
from sparsearch.launch.phases import PhaseClock, TimedFitness
from sparsearch.search.fitness import VALIDATION


@pytest.fixture
def ticks(monkeypatch):
    """perf_counter returns 0, 1, 2, ...: each call to it is one second later."""
    counter = itertools.count()
    monkeypatch.setattr(phases.time, "perf_counter", lambda: float(next(counter)))


def test_nested_phases_are_not_counted_twice(ticks):
    clock = PhaseClock()
    with clock("search"):             # t=0
        with clock("probes"):         # t=1 .. t=2: 1 s
            pass
        with clock("selection"):      # t=3 .. t=4: 1 s
            pass
    # search ends at t=5: 5 s in all, 2 s of them inside the inner phases
    assert clock.seconds == {"probes": 1.0, "selection": 1.0, "search": 3.0}
    with clock("probes"):             # a phase entered again adds up: t=6 .. t=7
        pass
    assert clock.seconds["probes"] == 2.0 and clock.current is None


class _Fitness:
    survivors = (2, 1)
    validates = True

    def __init__(self):
        self.calls = []

    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        self.calls.append((stage, sample))
        return [float(sum(g)) for g in genomes]


def test_validation_scoring_is_selection_and_the_rest_passes_through(ticks):
    clock, inner = PhaseClock(), _Fitness()
    fitness = TimedFitness(inner, clock)
    assert fitness.survivors == (2, 1) and fitness.validates  # attributes of the wrapped fitness
    with clock("search"):
        assert fitness.evaluate_many([(1, 2)], 0) == [3.0]
        assert fitness.evaluate_many([(1, 1)], VALIDATION, sample=3) == [2.0]
        probe = clock.timed(lambda g: fitness.evaluate_many([g], 1), "probes")
        assert probe((0, 4)) == [4.0]
    assert inner.calls == [(0, 0), (VALIDATION, 3), (1, 0)]
    assert set(clock.seconds) == {"search", "selection", "probes"}
    assert clock.seconds["selection"] == 1.0 and clock.seconds["probes"] == 1.0
