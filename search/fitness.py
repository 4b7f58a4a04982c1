"""What search engines need from a fitness: scores of genomes at a stage of a schedule."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from sparsearch.search.space import Genome


class Fitness(Protocol):
    """A score per genome at a stage (lower is better).

    ``survivors[s]`` candidates are kept after stage ``s``; later stages are costlier and more
    accurate. ``on_result(i, score)`` is called as soon as genome ``i`` is scored.
    """

    survivors: Sequence[int]

    def evaluate_many(
        self, genomes: Sequence[Genome], stage: int, on_result: Callable[[int, float], None] | None = None
    ) -> list[float]: ...
