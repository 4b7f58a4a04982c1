"""The run directory's search files, all written so that a killed run can resume exactly.

- ``settings.json``: the engine, seed and the fitness/budget settings the run was made with,
  written before its first evaluation (a resume under other settings is refused);
- ``checkpoint.json``: the engine state at the last generation/trial boundary (atomic rewrite);
- ``evaluations.jsonl``: one line per finished evaluation ``(genome, stage, sample, score)``, appended and
  synced as each finishes, so a resumed run re-uses every completed evaluation;
- ``history.jsonl``: one line per generation/trial, cut back to the checkpoint on resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sparsearch.base.atomic import append_line, atomic_write, atomic_write_json, read_json_object, read_lines
from sparsearch.search.space import Genome

SETTINGS = "settings.json"
CHECKPOINT = "checkpoint.json"
EVALUATIONS = "evaluations.jsonl"
HISTORY = "history.jsonl"


class RunFiles:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self._evaluations: int | None = None  # lines in evaluations.jsonl, counted once then kept

    def evaluation_count(self) -> int:
        if self._evaluations is None:
            self._evaluations = len(self.evaluations())
        return self._evaluations

    def load_settings(self) -> dict | None:
        return self._load_json(SETTINGS)

    def save_settings(self, settings: dict) -> None:
        atomic_write_json(self.dir / SETTINGS, settings)

    def load_checkpoint(self) -> dict | None:
        return self._load_json(CHECKPOINT)

    def _load_json(self, name: str) -> dict | None:
        f = self.dir / name
        if not f.is_file():
            return None
        return read_json_object(f, "corrupt run file")

    def save_checkpoint(self, state: dict) -> None:
        atomic_write_json(self.dir / CHECKPOINT, state)

    def history(self) -> list[dict]:
        return read_lines(self.dir / HISTORY)

    def append_history(self, record: dict) -> None:
        append_line(self.dir / HISTORY, record)

    def truncate_history(self, n: int) -> None:
        lines = self.history()[:n]
        atomic_write(self.dir / HISTORY, "".join(json.dumps(r) + "\n" for r in lines).encode())

    def evaluations(self) -> list[dict]:
        return read_lines(self.dir / EVALUATIONS)

    def append_evaluation(self, genome: Genome, stage: int, score: float, space: str = "", sample: int = 0) -> None:
        count = self.evaluation_count()
        record = {"genome": list(genome), "stage": stage, "score": score, "space": space}
        if sample:
            record["sample"] = sample
        append_line(self.dir / EVALUATIONS, record)
        self._evaluations = count + 1

    def reset(self) -> None:
        for name in (SETTINGS, CHECKPOINT, EVALUATIONS, HISTORY):
            (self.dir / name).unlink(missing_ok=True)
        self._evaluations = 0
