"""The evaluation cache: every (genome, stage) is scored once per run and kept on disk."""

from __future__ import annotations

from typing import Callable, Sequence

from sparsearch.search.fitness import Fitness
from sparsearch.search.runfiles import RunFiles
from sparsearch.search.space import Genome


class CachedFitness:
    """Wraps a :class:`~sparsearch.search.fitness.Fitness`: each (genome, stage, sample) is scored
    once per run, and every score is persisted as it arrives, so a resumed run never repeats a
    completed evaluation. ``space`` names the search space the genomes index (engines that change
    spaces use one per space)."""

    def __init__(self, fitness: Fitness, files: RunFiles, space: str = ""):
        self.fitness = fitness
        self.files = files
        self.space = space
        self.survivors = tuple(fitness.survivors)
        self.validates = bool(getattr(fitness, "validates", False))
        self.cache: dict[tuple[Genome, int, int], float] = {
            (tuple(r["genome"]), r["stage"], r.get("sample", 0)): r["score"]
            for r in files.evaluations() if r.get("space", "") == space
        }

    def evaluate(self, genomes: Sequence[Genome], stage: int, sample: int = 0,
                 on_score: Callable[[], None] | None = None) -> list[float]:
        """The scores of ``genomes`` on ``stage``; ``on_score()`` is called after each one not cached
        (e.g. to advance a progress bar)."""
        genomes = [tuple(int(x) for x in g) for g in genomes]
        missing = list(dict.fromkeys(g for g in genomes if (g, stage, sample) not in self.cache))

        def record(i: int, score: float) -> None:
            self.cache[(missing[i], stage, sample)] = float(score)
            self.files.append_evaluation(missing[i], stage, float(score), self.space, sample)
            if on_score is not None:
                on_score()

        if missing:
            scores = self.fitness.evaluate_many(missing, stage, on_result=record, sample=sample)
            for i, s in enumerate(scores):  # a fitness that does not call on_result
                if (missing[i], stage, sample) not in self.cache:
                    record(i, s)
        return [self.cache[(g, stage, sample)] for g in genomes]
