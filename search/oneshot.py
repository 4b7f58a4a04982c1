"""One-shot allocations as engines: no search, the result is the start genome.

The genome itself is computed elsewhere and given as the engine's only start: the uniform genome
by :meth:`~sparsearch.search.space.SearchSpace.uniform`, OWL's layer ratios by
:mod:`sparsearch.supernet.owl`, FLAP's global structure by :mod:`sparsearch.supernet.flap` (these
need the model's activations). As engines they share the run directory, the evaluation cache,
resume and reporting with the searches, and their final-stage fitness is comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsearch.search.engine import Engine
from sparsearch.search.space import Genome


@dataclass(frozen=True)
class OneShotConfig:
    """One-shot allocations have no settings of their own."""


class OneShotEngine(Engine):
    """Scores its start (the uniform genome if none is given) on the final stage, and stops."""

    one_shot = True

    def initialize(self) -> None:
        self.genome = self.start_genome()
        self.score = self.fitness.evaluate([self.genome], self.final_stage)[0]

    def done(self) -> bool:
        return True

    def step(self) -> dict[str, Any]:
        raise AssertionError("a one-shot allocation has no steps")

    def best(self) -> tuple[Genome, float]:
        return self.genome, self.score

    @classmethod
    def planned_evaluations(cls, config: OneShotConfig, survivors, space) -> dict[int, int]:
        return {len(survivors) - 1: 1}

    def get_state(self) -> dict[str, Any]:
        return {"genome": list(self.genome), "score": self.score}

    def set_state(self, state: dict[str, Any]) -> None:
        self.genome, self.score = tuple(state["genome"]), state["score"]


class UniformAllocation(OneShotEngine):
    """Every unit at the level nearest the target, repaired into the budget band."""

    name = "uniform"


class OWLAllocation(OneShotEngine):
    """OWL's outlier-weighted layer sparsities (start computed by :mod:`sparsearch.supernet.owl`)."""

    name = "owl"


class FLAPAllocation(OneShotEngine):
    """FLAP's fluctuation-ranked global structure (start computed by :mod:`sparsearch.supernet.flap`)."""

    name = "flap"
