"""Wall time per phase of a run (load, sampling, build, teacher, probes, search, selection, export),
for ``summary.json`` and the benchmarks.

Phases nest: time spent in an inner phase is not counted in the outer one, so the phases add up
to the time they cover. The fitness the engine sees is wrapped so that validation scoring is
counted as ``selection`` wherever it happens, and a start computed from probes (the knapsack) as
``probes``::

    clock = PhaseClock()
    with clock("search"):
        fitness = TimedFitness(fitness, clock)
        starts = {name: clock.timed(start, "probes") if callable(start) else start ...}
        engine.run(...)
    clock.seconds  # {"search": ..., "probes": ..., "selection": ...}
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sparsearch.search.fitness import VALIDATION


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, started, seconds of inner phases]

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - frame[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + total - frame[2]
            if self._stack:
                self._stack[-1][2] += total

    @property
    def current(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    def timed(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        """``fn`` with its calls counted as phase ``name``."""
        def call(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)
        return call

    def add(self, seconds: dict[str, float]) -> None:
        """Phases measured elsewhere, in a step this run waited on (a Ray task), counted as its own
        (and, like any inner phase, not in the phase it was waited in)."""
        for name, s in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s
            if self._stack:
                self._stack[-1][2] += s

    def rounded(self) -> dict[str, float]:
        return {name: round(s, 1) for name, s in self.seconds.items()}


class TimedFitness:
    """A fitness whose validation scoring counts as phase ``selection`` (everything else passes through)."""

    def __init__(self, fitness, clock: PhaseClock):
        self._fitness, self._clock = fitness, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fitness, name)

    def evaluate_many(self, genomes, stage, on_result=None, sample: int = 0):
        if stage != VALIDATION or self._clock.current == "selection":
            return self._fitness.evaluate_many(genomes, stage, on_result, sample)
        with self._clock("selection"):
            return self._fitness.evaluate_many(genomes, stage, on_result, sample)
