"""Exact resume: real SIGKILLs at random points of every engine's run, each search in its own
process (``tests.helpers.kill_target``). Torn log lines and runs resumed under other settings are
unit tests (tests/unit/test_runfiles.py)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.kill_target import CONFIGS

ROOT = Path(__file__).resolve().parents[1]  # `python -m tests.helpers.kill_target` runs from here
EVENTS = ["evaluate", "append", "atomic", "checkpoint"]
KILLS = 20  # per engine


def _run(engine: str, run_dir: Path, *, resume: bool, kill: str | None = None, delay: float | None = None):
    args = [sys.executable, "-m", "tests.helpers.kill_target", engine, str(run_dir)] + (["--resume"] if resume else [])
    args += ["--kill", kill] if kill else []
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


# TPE's constraint mode is a second TPE run (about a minute on 2 cores) through the same ask/tell
# resume path as the default mode: it runs with -m slow, which CI also runs
SLOW_KILLS = {"tpe-constraint"}


@pytest.mark.parametrize("engine", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW_KILLS else e for e in CONFIGS])
def test_sigkill_at_random_points_resumes_to_the_uninterrupted_run(engine, tmp_path):
    t0 = time.perf_counter()
    code, out, err = _run(engine, tmp_path / "reference", resume=False)
    wall = time.perf_counter() - t0
    assert code == 0, err
    reference = json.loads(out)
    counts = reference.pop("events")
    events = [e for e in EVENTS + ["ask", "tell"] if counts.get(e)]
    rng = random.Random(engine)
    killed, lineage, attempt, picks = [], 0, 0, 0
    while len(killed) < KILLS:
        run_dir = tmp_path / f"lineage{lineage}"
        lineage += 1
        resume = False
        for _ in range(5):  # up to five kills in a row, each resumed by the next process
            attempt += 1
            if attempt % 3 == 0:  # from outside, at a random moment
                spec, code, out, err = None, *_run(engine, run_dir, resume=resume, delay=rng.uniform(0.1, 0.9) * wall)
            else:  # at a random occurrence of each kind of point in turn
                e, picks = events[picks % len(events)], picks + 1
                spec = f"{e}:{rng.randint(1, max(1, counts[e] // (3 if resume else 1)))}"
                code, out, err = _run(engine, run_dir, resume=resume, kill=spec)
            if code == -signal.SIGKILL:
                killed.append(spec or "timed")
                resume = True
                continue
            assert code == 0, err
            break
        else:
            code, out, err = _run(engine, run_dir, resume=True)
            assert code == 0, err
        result = json.loads(out)
        result.pop("events")
        assert result == reference, (engine, killed[-5:])
    assert {k.split(":")[0] for k in killed if k != "timed"} == set(events)  # every kind of point was hit
