"""One-shot allocations as engines: no search, the result is the start genome.

Every start registered in :data:`sparsearch.search.registry.STARTS` is also an engine of its own
name (:meth:`OneShotEngine.of`): the run computes the start (:mod:`sparsearch.search.starts`) and
gives it as the engine's only start, and the engine scores it on the final stage. As engines they
share the run directory, the evaluation cache, resume and reporting with the searches, and their
final-stage fitness is comparable.
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

    name = "one-shot"
    one_shot = True

    @classmethod
    def of(cls, name: str) -> type["OneShotEngine"]:
        """This engine under the name of start ``name`` (the name its run files and checkpoints carry)."""
        if cls.name == name:
            return cls
        return type(f"{cls.__name__}[{name}]", (cls,), {"name": name, "__module__": cls.__module__,
                                                          "__doc__": f"The one-shot engine of start {name}."})

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
