"""The run directory's search files, all written so that a killed run can resume exactly.

- ``settings.json``: the engine, seed and the fitness/budget settings the run was made with,
  written before its first evaluation (a resume under other settings is refused);
- ``checkpoint.json``: the engine state at the last generation/trial boundary (atomic rewrite);
- ``evaluations.jsonl``: one line per finished evaluation ``(genome, stage, sample, score)``, appended and
  synced as each finishes, so a resumed run re-uses every completed evaluation;
- ``history.jsonl``: one line per generation/trial, cut back to the checkpoint on resume.

Each is checked as it is read: a checkpoint of another engine or seed, a record without its
fields, a log that is a symbolic link, or another file in a run file's place is one
:class:`~sparsearch.base.errors.SparsearchError` line naming the file (and the line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sparsearch.base.atomic import append_line, atomic_write, atomic_write_json, read_json_object, read_lines
from sparsearch.base.errors import SparsearchError
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

    def load_checkpoint(self, engine: str | None = None, seed: int | None = None) -> dict | None:
        """The checkpoint, checked to be one of ``engine`` with ``seed`` (when given)."""
        state = self._load_json(CHECKPOINT)
        if state is not None:
            problem = _checkpoint_problem(state, engine, seed)
            if problem:
                raise SparsearchError(f"checkpoint {self.dir / CHECKPOINT} {problem}; start a new run without --resume")
        return state

    def _load_json(self, name: str) -> dict | None:
        f = self.dir / name
        if not f.is_file():
            return None
        return read_json_object(f, "corrupt run file")

    def save_checkpoint(self, state: dict) -> None:
        atomic_write_json(self.dir / CHECKPOINT, state)

    def history(self) -> list[dict]:
        return read_lines(self.dir / HISTORY, "run history", _history_problem)

    def append_history(self, record: dict) -> None:
        append_line(self.dir / HISTORY, record)

    def truncate_history(self, n: int) -> None:
        lines = self.history()[:n]
        atomic_write(self.dir / HISTORY, "".join(json.dumps(r) + "\n" for r in lines).encode())

    def evaluations(self) -> list[dict]:
        return read_lines(self.dir / EVALUATIONS, "evaluation log", _evaluation_problem)

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


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _evaluation_problem(r: dict) -> str | None:
    missing = [k for k in ("genome", "stage", "score") if k not in r]
    if missing:
        return f"no {', '.join(missing)}"
    if not (isinstance(r["genome"], list) and r["genome"] and all(_is_int(x) and x >= 0 for x in r["genome"])):
        return "genome is not a list of levels"
    if not _is_int(r["stage"]) or not _is_number(r["score"]) or not _is_int(r.get("sample", 0)):
        return "stage, sample or score is not a number"
    if not isinstance(r.get("space", ""), str):
        return "space is not a name"
    return None


def _history_problem(r: dict) -> str | None:
    if not _is_int(r.get("step")) or not _is_int(r.get("evaluations")) or not _is_number(r.get("best_fitness")):
        return "no step, evaluations or best_fitness"
    return None


def _checkpoint_problem(c: dict, engine: str | None, seed: int | None) -> str | None:
    if engine is not None and c.get("engine") != engine or seed is not None and c.get("seed") != seed:
        return (f"is of a {c.get('engine')!r} run with seed {c.get('seed')!r}, not this {engine} run with seed {seed}")
    if not _is_int(c.get("step")) or c["step"] < 0:
        return "has no step"
    rng = c.get("rng")
    if not (isinstance(rng, list) and len(rng) == 3 and _is_int(rng[0]) and isinstance(rng[1], list)
            and all(_is_int(x) for x in rng[1]) and (rng[2] is None or _is_number(rng[2]))):
        return "has no random state"
    if not isinstance(c.get("state"), dict):
        return "has no engine state"
    for key, kind in (("starts", dict), ("start_scores", dict), ("candidates", list)):
        if not isinstance(c.get(key, kind()), kind):
            return f"has a malformed {key}"
    if not _is_int(c.get("since_improved", 0)) or not _is_number(c.get("wall_time_s", 0.0)):
        return "has a malformed since_improved or wall_time_s"
    if not all(isinstance(g, list) and all(_is_int(x) for x in g) for g in c.get("starts", {}).values()):
        return "has a start that is not a genome"
    if not all(_is_number(v) for v in c.get("start_scores", {}).values()):
        return "has a start score that is not a number"
    if not all(isinstance(x, dict) and isinstance(x.get("genome"), list) and _is_number(x.get("kl"))
               for x in c.get("candidates", [])):
        return "has a malformed candidate"
    return None
