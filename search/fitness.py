"""What search engines need from a fitness: scores of genomes at a stage of a schedule."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from sparsearch.search.space import Genome

VALIDATION = -1
"""The stage index of the validation split: sequences of the calibration source that no stage of the
schedule scores on, used only to choose among a search's candidates (never by selection inside it)."""


class Fitness(Protocol):
    """A score per genome at a stage (lower is better).

    ``survivors[s]`` candidates are kept after stage ``s``; later stages are costlier and more
    accurate. ``sample`` picks the data a stage scores on: 0 is the fixed reference sample that
    every engine reports on; other numbers draw other batches from the fitness token pool (the
    same number, the same batches), so that a search can score each generation on fresh data
    (DarwinLM) instead of fitting a fixed one. ``on_result(i, score)`` is called as soon as
    genome ``i`` is scored. Stage :data:`VALIDATION` scores on the validation split (a fitness
    without one has ``validates = False``).
    """

    survivors: Sequence[int]
    validates: bool

    def evaluate_many(
        self, genomes: Sequence[Genome], stage: int, on_result: Callable[[int, float], None] | None = None,
        sample: int = 0,
    ) -> list[float]: ...
