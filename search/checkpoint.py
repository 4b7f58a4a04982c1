"""The run directory's search files, all written so that a killed run can resume exactly.

- ``checkpoint.json``: the engine state at the last generation/trial boundary (atomic rewrite);
- ``evaluations.jsonl``: one line per finished evaluation ``(genome, stage, score)``, appended and
  flushed as each finishes, so a resumed run re-uses every completed evaluation;
- ``history.jsonl``: one line per generation/trial, cut back to the checkpoint on resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from sparsearch.search.space import Genome

CHECKPOINT = "checkpoint.json"
EVALUATIONS = "evaluations.jsonl"
HISTORY = "history.jsonl"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def _append_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            break
    return out


class Fitness(Protocol):
    """What engines need from fitness: a score per genome at a stage (lower is better).

    ``survivors[s]`` candidates are kept after stage ``s``; later stages are costlier and more
    accurate. ``on_result(i, score)`` is called as soon as genome ``i`` is scored.
    """

    survivors: Sequence[int]

    def evaluate_many(
        self, genomes: Sequence[Genome], stage: int, on_result: Callable[[int, float], None] | None = None
    ) -> list[float]: ...


class RunFiles:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self._evaluations: int | None = None  # lines in evaluations.jsonl, counted once then kept

    def evaluation_count(self) -> int:
        if self._evaluations is None:
            self._evaluations = len(self.evaluations())
        return self._evaluations

    def load_checkpoint(self) -> dict | None:
        f = self.dir / CHECKPOINT
        return json.loads(f.read_text()) if f.is_file() else None

    def save_checkpoint(self, state: dict) -> None:
        atomic_write_json(self.dir / CHECKPOINT, state)

    def history(self) -> list[dict]:
        return _read_lines(self.dir / HISTORY)

    def append_history(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _append_line(self.dir / HISTORY, record)

    def truncate_history(self, n: int) -> None:
        lines = self.history()[:n]
        atomic_write(self.dir / HISTORY, "".join(json.dumps(r) + "\n" for r in lines).encode())

    def evaluations(self) -> list[dict]:
        return _read_lines(self.dir / EVALUATIONS)

    def append_evaluation(self, genome: Genome, stage: int, score: float, space: str = "") -> None:
        count = self.evaluation_count()
        self.dir.mkdir(parents=True, exist_ok=True)
        _append_line(self.dir / EVALUATIONS, {"genome": list(genome), "stage": stage, "score": score, "space": space})
        self._evaluations = count + 1

    def reset(self) -> None:
        for name in (CHECKPOINT, EVALUATIONS, HISTORY):
            (self.dir / name).unlink(missing_ok=True)
        self._evaluations = 0


class CachedFitness:
    """Wraps a :class:`Fitness`: each (genome, stage) is scored once per run, and every score is
    persisted as it arrives, so a resumed run never repeats a completed evaluation. ``space``
    names the search space the genomes index (engines that change spaces use one per space)."""

    def __init__(self, fitness: Fitness, files: RunFiles, space: str = ""):
        self.fitness = fitness
        self.files = files
        self.space = space
        self.survivors = tuple(fitness.survivors)
        self.cache: dict[tuple[Genome, int], float] = {
            (tuple(r["genome"]), r["stage"]): r["score"] for r in files.evaluations() if r.get("space", "") == space
        }

    def evaluate(self, genomes: Sequence[Genome], stage: int) -> list[float]:
        genomes = [tuple(int(x) for x in g) for g in genomes]
        missing = list(dict.fromkeys(g for g in genomes if (g, stage) not in self.cache))

        def record(i: int, score: float) -> None:
            self.cache[(missing[i], stage)] = float(score)
            self.files.append_evaluation(missing[i], stage, float(score), self.space)

        if missing:
            scores = self.fitness.evaluate_many(missing, stage, on_result=record)
            for i, s in enumerate(scores):  # a fitness that does not call on_result
                if (missing[i], stage) not in self.cache:
                    record(i, s)
        return [self.cache[(g, stage)] for g in genomes]
