"""A search on the synthetic fitness in its own process, for kill-and-resume tests.

    python -m tests.helpers.kill_target ENGINE RUN_DIR [--resume] [--kill EVENT:N]   # from the repository root

Prints the result as JSON. ``--kill EVENT:N`` makes the process SIGKILL itself at the N-th
occurrence of EVENT: ``evaluate`` (inside an evaluation), ``append`` (half-way through writing a
line of evaluations.jsonl or history.jsonl: a torn line), ``atomic`` (after writing an atomic
write's temporary file, before its rename), ``checkpoint`` (after a step's history line, before
its checkpoint), ``ask`` / ``tell`` (TPE: after a trial is asked, after a score is told).
Without it the test kills the process from outside at a random moment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from sparsearch.base import atomic
from sparsearch.search import runfiles
from sparsearch.search.registry import ENGINES, make_engine
from tests.helpers.synthetic import SyntheticFitness, make_budget, search_engines, synthetic_extras, synthetic_space

SHORT = {  # settings that keep a run to a few seconds (an engine not named here runs with its defaults)
    "evolution": dict(generations=10, offspring=6),
    "nsga2": dict(population=8, generations=6),
    "tpe": dict(trials=24, startup_trials=6),
    "tyr": dict(rounds=2, generations=4, offspring=4),
}
# every registered search engine, variants of some, and the knapsack's probes: name -> (engine, settings)
CONFIGS = {
    **{name: (name, SHORT.get(name, {})) for name in search_engines()},
    "nsga2-dc": ("nsga2", dict(population=8, generations=3, blocks=3)),
    "tpe-constraint": ("tpe", dict(trials=24, startup_trials=6, budget_mode="constraint")),
    "knapsack": ("knapsack", dict(probe_stage=0)),
}

counts: dict[str, int] = {}
kill_event, kill_at = None, -1


def event(name: str) -> None:
    counts[name] = counts.get(name, 0) + 1
    if name == kill_event and counts[name] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def instrument() -> None:
    real_append, real_replace = atomic.append_line, os.replace

    def append_line(path, record):
        counts["append"] = counts.get("append", 0) + 1
        if kill_event == "append" and counts["append"] == kill_at:
            line = (json.dumps(record) + "\n").encode()
            with open(path, "ab") as f:
                f.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_append(path, record)

    def replace(src, dst):
        event("atomic")
        real_replace(src, dst)

    atomic.append_line = runfiles.append_line = append_line
    atomic.os.replace = replace
    real_checkpoint = runfiles.RunFiles.save_checkpoint

    def save_checkpoint(self, state):
        event("checkpoint")
        real_checkpoint(self, state)

    runfiles.RunFiles.save_checkpoint = save_checkpoint
    import optuna

    real_ask, real_tell, real_add = optuna.Study.ask, optuna.Study.tell, optuna.Study.add_trial

    def ask(self, *a, **k):
        trial = real_ask(self, *a, **k)
        event("ask")
        return trial

    def tell(self, *a, **k):
        out = real_tell(self, *a, **k)
        event("tell")
        return out

    def add_trial(self, *a, **k):
        real_add(self, *a, **k)
        event("tell")

    optuna.Study.ask, optuna.Study.tell, optuna.Study.add_trial = ask, tell, add_trial


class SlowFitness(SyntheticFitness):
    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        out = []
        for i, g in enumerate(genomes):
            time.sleep(0.002)
            event("evaluate")
            out.append(super().evaluate_many([g], stage, None, sample)[0])
            if on_result:
                on_result(i, out[-1])
        return out


def main() -> None:
    global kill_event, kill_at
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=list(CONFIGS))
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill")
    args = p.parse_args()
    if args.kill:
        kill_event, n = args.kill.split(":")
        kill_at = int(n)
    instrument()
    name, cfg = CONFIGS[args.engine]
    space = synthetic_space()
    engine = make_engine(name, space, make_budget(space), SlowFitness(space), ENGINES[name].config(**cfg),
                         run_dir=args.run_dir, seed=3, log=None,
                         **synthetic_extras(name, fitness=SlowFitness))  # the rounds' fitness is slow too
    result = engine.run(resume=args.resume, settings={"target_sparsity": 0.5})
    print(json.dumps({"best_genome": list(result.best_genome), "best_fitness": result.best_fitness,
                      "evaluations": result.evaluations, "pareto": result.pareto,
                      "history": engine.files.history(), "events": counts}))


if __name__ == "__main__":
    main()
