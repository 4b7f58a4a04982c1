"""Files sparsearch reads are untrusted: no file can run code, every path a file names stays in its
folder, every run directory has one owner, and anything else in a file's place is one
``sparsearch: error:`` line with the files left as they were (issue #36).

Commands run in process (``main``) where the point is the answer to a file; a subprocess where a
second process is the point (the lock's holder, a SIGKILL)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsearch.launch.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--calib-samples", "4", "--calib-seqlen", "32", "--mlp-alignment", "8", "--quiet"]
SEARCH = ["--generations", "1", "--offspring", "2", "--schedule", "1:64", "--calib-seqlen", "32", "--quiet"]
HEAL = ["--tokens", "256", "--seqlen", "32", "--checkpoint-every", "1", "--quiet"]


def one_error(capsys, *args) -> str:
    """Run the command line in process; its single error line (nothing else on stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0, lines
    assert len(lines) == 1 and lines[0].startswith("sparsearch: error: "), lines
    return lines[0]


def succeeds(capsys, *args) -> None:
    capsys.readouterr()
    code = main([str(a) for a in args])
    assert code == 0, capsys.readouterr().err


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its SHA-256 (to show that a folder is untouched), but a
    supernet's cache of verified hashes (a copy's files have new inodes: hashed and remembered again)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != "verified.json"} if path.exists() else {}


@pytest.fixture(scope="module")
def made(model_dir, tmp_path_factory):
    """A finished supernet, an evolution run with a healed export, a TPE run and an unfinished
    supernet of the tiny model (made in process: they are the inputs here)."""
    root = tmp_path_factory.mktemp("untrusted")
    m, text = model_dir / "model", model_dir / "text.txt"
    assert main(["supernet", "--model", str(m), "--out", str(root / "sn"), "--calib-text", str(text), *TINY]) == 0
    assert main(["run", "--model", str(m), "--run-dir", str(root / "run"), "--supernet", str(root / "sn"),
                 "--calib-text", str(text), *TINY, *SEARCH]) == 0
    assert main(["heal", "--run-dir", str(root / "run"), "--calib-text", str(text), *HEAL]) == 0
    assert main(["search", "--model", str(m), "--supernet", str(root / "sn"), "--run-dir", str(root / "tpe"),
                 "--calib-text", str(text), "--engine", "tpe", "--trials", "4", "--startup-trials", "2",
                 *SEARCH]) == 0
    assert main(["search", "--model", str(m), "--supernet", str(root / "sn"), "--run-dir", str(root / "train"),
                 "--calib-text", str(text), *SEARCH, "--schedule", "2:64,1:128:256"]) == 0  # training-aware stages
    partial = root / "partial"
    shutil.copytree(root / "sn", partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["complete"] = False
    manifest["units"].pop(sorted(manifest["units"])[-1])
    (partial / "manifest.json").write_text(json.dumps(manifest))
    return root, m, text


def copied(made, tmp_path: Path, *names: str) -> Path:
    """Copies of the fixture's folders ``names`` in ``tmp_path``; summaries name the copied supernet."""
    root = made[0]
    for name in names:
        shutil.copytree(root / name, tmp_path / name, symlinks=True)
        summary = tmp_path / name / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            s["supernet"] = str(tmp_path / "sn") if (tmp_path / "sn").exists() else s["supernet"]
            summary.write_text(json.dumps(s))
    return tmp_path


# -- 1. a pickle in place of any file a command reads runs nothing ------------------------------
class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _variant(folder: Path) -> str:
    return str(sorted((folder / "variants").iterdir())[0].relative_to(folder.parent))


def _command(made, tmp: Path, kind: str) -> list:
    _, m, text = made
    search = ["search", "--model", m, "--supernet", tmp / "sn", "--calib-text", text, "--resume", *SEARCH]
    return {
        "search": [*search, "--run-dir", tmp / "run"],
        "tpe": [*search, "--run-dir", tmp / "tpe", "--engine", "tpe", "--trials", "5", "--startup-trials", "2"],
        "train": [*search, "--run-dir", tmp / "train", "--schedule", "2:64,1:128:256"],
        "export": ["export", "--run-dir", tmp / "run", "--out", tmp / "out", "--quiet"],
        "report": ["report", "--run-dir", tmp / "run"],
        "heal": ["heal", "--run-dir", tmp / "run", "--calib-text", text, "--resume", *HEAL],
        "heal-finished": ["heal", "--run-dir", tmp / "run", "--calib-text", text, "--resume", *HEAL],
        "build": ["supernet", "--model", m, "--out", tmp / "partial", "--calib-text", text, *TINY],
        "eval": ["eval", "--model", tmp / "run" / "export", "--data", text, "--seqlen", "32", "--quiet"],
    }[kind]


# (command, planted file, what happens): "error" is one line; "ok" a success, where the command
# legitimately does without the file's content (said for each)
PLANTED = [
    ("search", "run/settings.json", "error"),
    ("search", "run/checkpoint.json", "error"),
    ("search", "run/evaluations.jsonl", "error"),
    ("search", "run/history.jsonl", "error"),
    ("search", "run/fitness_tokens.safetensors", "error"),
    ("search", "run/validation_tokens.safetensors", "error"),
    ("search", "run/summary.json", "ok"),  # a search writes its summary; it never reads one
    ("search", "run/.sparsearch-run", "ok"),  # the marker's presence is what counts; it is never parsed
    ("search", "sn/manifest.json", "error"),
    ("search", "sn/verified.json", "ok"),  # a cache of hashes: every variant file is hashed again
    ("search", "sn/calibration.safetensors", "error"),  # checked with the variant files
    ("search", "VARIANT", "error"),
    ("tpe", "tpe/optuna.log", "error"),
    ("tpe", "tpe/checkpoint.json", "error"),
    ("tpe", "tpe/evaluations.jsonl", "error"),
    ("train", "train/train_tokens.safetensors", "error"),
    ("export", "run/summary.json", "error"),
    ("export", "sn/manifest.json", "error"),
    ("export", "VARIANT", "error"),
    ("export", "sn/verified.json", "ok"),  # the cache again
    ("report", "run/summary.json", "error"),
    ("report", "run/history.jsonl", "error"),
    ("heal", "run/summary.json", "error"),
    ("heal", "run/heal/settings.json", "error"),
    ("heal", "run/heal/data.safetensors", "error"),
    ("heal", "run/heal/checkpoint.safetensors", "error"),
    ("heal", "run/heal/checkpoint.pt", "error"),  # a pickled checkpoint of an older version: refused unread
    ("heal", "sn/manifest.json", "error"),
    ("heal-finished", "run/heal.json", "error"),
    ("build", "partial/manifest.json", "error"),
    ("build", "partial/calibration.safetensors", "error"),
    ("eval", "run/export/config.json", "error"),
    ("eval", "run/export/model.safetensors", "error"),
    ("eval", "run/export/tokenizer.json", "error"),
    ("eval", "run/export/tokenizer_config.json", "error"),
    ("eval", "run/export/generation_config.json", "ok"),  # transformers drops an unreadable one; eval never generates
]


@pytest.mark.parametrize("kind, name, expect", PLANTED, ids=[f"{k}:{n}" for k, n, _ in PLANTED])
def test_a_pickle_in_place_of_a_file_runs_nothing(made, tmp_path, capsys, kind, name, expect):
    tmp = copied(made, tmp_path, "sn", "run", "tpe", "train", "partial")
    if kind == "heal":  # killed while training: no heal.json, no healed export yet
        (tmp / "run" / "heal.json").unlink()
        shutil.rmtree(tmp / "run" / "export-healed")
    name = _variant(tmp / "sn") if name == "VARIANT" else name
    marker = tmp_path / "ran"
    (tmp / name).write_bytes(pickle.dumps(_Payload(marker)))
    args = _command(made, tmp, kind)
    if expect == "error":
        before = tree(tmp)
        line = one_error(capsys, *args)
        assert (Path(name).name if kind != "eval" else "export") in line, line
        assert tree(tmp) == before
    else:
        succeeds(capsys, *args)
    assert not marker.exists()


def test_no_source_file_unpickles_or_loads_yaml_unsafely():
    """The package's source never unpickles: no pickle.load(s), no torch.load but with
    weights_only=True, no unsafe YAML loader."""
    banned = [r"weights_only\s*=\s*False", r"\bpickle\.loads?\(", r"\bcPickle\b", r"\bdill\.", r"yaml\.load\(",
              r"yaml\.unsafe_load", r"yaml\.full_load", r"Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b",
              r"\bmarshal\.loads?\(", r"\bshelve\.", r"numpy\.load\([^)]*allow_pickle\s*=\s*True",
              r"np\.load\([^)]*allow_pickle\s*=\s*True"]
    sources = [p for d in ("base", "search", "supernet", "fitness", "launch") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 30
    found = []
    for path in sources:
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {pat}" for pat in banned if re.search(pat, text)]
        for call in re.finditer(r"torch\.load\(", text):
            args = text[call.end(): text.find(")", call.end()) + 1]
            if "weights_only=True" not in args.replace(" ", ""):
                found.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert found == []


# -- 2. paths named in files stay in their folder -------------------------------------------------
@pytest.mark.parametrize("name, words", [
    ("../outside.safetensors", "not a path inside"),
    ("/etc/passwd", "not a path inside"),
    ("variants/../../outside.safetensors", "not a path inside"),
    ("", "not a file name"),
    (7, "not a file name"),
    ("LINK", "leads outside"),
])
def test_a_manifest_names_only_files_inside_its_supernet(made, tmp_path, capsys, name, words):
    tmp = copied(made, tmp_path, "sn")
    (tmp_path / "outside.safetensors").write_bytes(b"secret")
    manifest = json.loads((tmp / "sn" / "manifest.json").read_text())
    entry = next(e for u in manifest["units"].values() for e in u["levels"] if e["file"])
    if name == "LINK":
        os.symlink(tmp_path / "outside.safetensors", tmp / "sn" / "variants" / "out.safetensors")
        name = "variants/out.safetensors"
    entry["file"] = name
    (tmp / "sn" / "manifest.json").write_text(json.dumps(manifest))
    before = tree(tmp_path)
    _, m, text = made
    line = one_error(capsys, "search", "--model", m, "--supernet", tmp / "sn", "--run-dir", tmp_path / "r",
                     "--calib-text", text, *SEARCH)
    assert words in line and "manifest.json" in line, line
    assert tree(tmp_path) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("change, words", [
    (lambda m: m.pop("units"), "units is not an object"),
    (lambda m: m.update(complete="yes"), "complete is not true or false"),
    (lambda m: m["model"].pop("fingerprint"), "fingerprint"),
    (lambda m: m["model"].update(shape=None), "no shape"),
    (lambda m: m["units"].update({"L000.bogus": m["units"]["L000.mlp"]}), "not a unit name"),
    (lambda m: m["units"]["L000.mlp"].update(levels=[]), "has no levels"),
    (lambda m: m["units"]["L000.mlp"]["levels"][1].update(params="many"), "no sparsity or params"),
    (lambda m: m["units"]["L000.mlp"]["levels"][1].update(sha256="abc"), "no sha256"),
    (lambda m: m["units"]["L000.mlp"]["levels"][1].update(kept=[1]), "kept"),
], ids=["units", "complete", "fingerprint", "shape", "unit-name", "levels", "params", "sha256", "kept"])
def test_a_manifest_without_its_fields_is_one_line(made, tmp_path, capsys, change, words):
    tmp = copied(made, tmp_path, "sn")
    manifest = json.loads((tmp / "sn" / "manifest.json").read_text())
    change(manifest)
    (tmp / "sn" / "manifest.json").write_text(json.dumps(manifest))
    before = tree(tmp)
    _, m, text = made
    line = one_error(capsys, "search", "--model", m, "--supernet", tmp / "sn", "--run-dir", tmp_path / "r",
                     "--calib-text", text, *SEARCH)
    assert words in line and "manifest" in line, line
    assert tree(tmp) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("log", ["evaluations.jsonl", "history.jsonl"])
def test_a_run_log_that_is_a_symlink_is_refused(made, tmp_path, capsys, log):
    tmp = copied(made, tmp_path, "sn", "run")
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes((tmp / "run" / log).read_bytes())
    (tmp / "run" / log).unlink()
    os.symlink(target, tmp / "run" / log)
    before = target.read_bytes()
    _, m, text = made
    line = one_error(capsys, "search", "--model", m, "--supernet", tmp / "sn", "--run-dir", tmp / "run",
                     "--calib-text", text, "--resume", *SEARCH)
    assert "symbolic link" in line and log in line, line
    assert target.read_bytes() == before


def test_the_optuna_journal_as_a_symlink_is_refused(made, tmp_path, capsys):
    tmp = copied(made, tmp_path, "sn", "tpe")
    target = tmp_path / "journal"
    (tmp / "tpe" / "optuna.log").rename(target)
    os.symlink(target, tmp / "tpe" / "optuna.log")
    before = target.read_bytes()
    _, m, text = made
    line = one_error(capsys, *_command(made, tmp, "tpe"))
    assert "symbolic link" in line and "optuna.log" in line, line
    assert target.read_bytes() == before


# -- 3. run files are checked as they are read ------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(engine="nsga2"), "not this evolution run"),
    (lambda c: c.update(seed=7), "with seed 7"),
    (lambda c: c.pop("rng"), "random state"),
    (lambda c: c.update(step=-1), "no step"),
    (lambda c: c.update(state=[]), "engine state"),
    (lambda c: c["state"].pop("parent"), "does not fit"),
    (lambda c: c.update(starts={"knapsack": [99, 99, 99, 99]}), "outside its ladder"),
], ids=["engine", "seed", "rng", "step", "state", "state-keys", "start"])
def test_a_checkpoint_of_another_run_is_one_line(made, tmp_path, capsys, change, words):
    tmp = copied(made, tmp_path, "sn", "run")
    path = tmp / "run" / "checkpoint.json"
    checkpoint = json.loads(path.read_text())
    change(checkpoint)
    path.write_text(json.dumps(checkpoint))
    before = tree(tmp / "run")
    line = one_error(capsys, *_command(made, tmp, "search"))
    assert words in line, line
    assert tree(tmp / "run") == before


@pytest.mark.parametrize("log, record, words", [
    ("evaluations.jsonl", {"genome": [1, 2, 3, 4], "stage": 0}, "line 3: no score"),
    ("evaluations.jsonl", {"genome": "1234", "stage": 0, "score": 1.0}, "line 3: genome"),
    ("evaluations.jsonl", {"genome": [1, 2, 3, 4], "stage": 0, "score": "low"}, "line 3: stage, sample or score"),
    ("evaluations.jsonl", [1, 2], "line 3: not a JSON object"),
    ("history.jsonl", {"step": 1}, "line 3: no step, evaluations or best_fitness"),
])
def test_a_run_log_record_without_its_fields_names_the_file_and_line(made, tmp_path, capsys, log, record, words):
    tmp = copied(made, tmp_path, "sn", "run")
    path = tmp / "run" / log
    lines = path.read_text().splitlines()[:2]
    lines = (lines + lines)[:2]
    path.write_text("\n".join([*lines, json.dumps(record), *lines]) + "\n")
    before = tree(tmp / "run")
    line = one_error(capsys, *_command(made, tmp, "search"))
    assert words in line and log in line, line
    assert tree(tmp / "run") == before


@pytest.mark.parametrize("kind", ["export", "report", "heal"])
@pytest.mark.parametrize("damage", ["torn", "missing", "wrong-type", "relative-supernet"])
def test_a_torn_or_foreign_summary_is_one_line(made, tmp_path, capsys, kind, damage):
    tmp = copied(made, tmp_path, "sn", "run")
    path = tmp / "run" / "summary.json"
    text = path.read_text()
    summary = json.loads(text)
    if damage == "torn":
        path.write_text(text[: len(text) // 2])
    else:
        if damage == "missing":
            summary.pop("best_genome")
        elif damage == "wrong-type":
            summary["per_layer"] = "everything"
        else:
            summary["supernet"] = "sn"
        path.write_text(json.dumps(summary))
    before = tree(tmp)
    line = one_error(capsys, *_command(made, tmp, kind))
    assert "summary.json" in line, line
    assert tree(tmp) == before and not (tmp / "out").exists()


def test_a_file_changed_in_place_with_its_mtime_restored_is_hashed_again(made, tmp_path):
    from sparsearch.supernet.store import SupernetStore

    tmp = copied(made, tmp_path, "sn")
    assert SupernetStore.open(tmp / "sn").check_files() > 0
    assert SupernetStore.open(tmp / "sn").check_files() == 0  # unchanged: remembered
    victim = sorted((tmp / "sn" / "variants").iterdir())[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    with open(victim, "r+b") as f:  # same inode, same size
        f.write(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime given back; the ctime moved on
    assert victim.stat().st_mtime_ns == st.st_mtime_ns and victim.stat().st_ino == st.st_ino
    with pytest.raises(Exception, match="SHA-256"):
        SupernetStore.open(tmp / "sn").check_files()


# -- 4. only run directories are reset, and each has one owner ------------------------------------
def test_a_folder_with_other_files_is_never_a_run_directory(made, tmp_path, capsys):
    _, m, text = made
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "export").mkdir()
    (home / "export" / "keep.txt").write_text("mine")
    before = tree(home)
    for command in (["search", "--supernet", made[0] / "sn"], ["run", "--supernet", made[0] / "sn", "--no-export"]):
        for resume in ([], ["--resume"]):
            line = one_error(capsys, *command, "--model", m, "--run-dir", home, "--calib-text", text, *SEARCH, *resume)
            assert "no .sparsearch-run" in line, line
    assert tree(home) == before and sorted(p.name for p in home.iterdir()) == ["export", "thesis.tex"]


@pytest.mark.parametrize("flag", ["--run-dir", "--supernet"])
def test_an_empty_path_is_refused(made, capsys, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("x")
    _, m, text = made
    args = {"--run-dir": ["--supernet", made[0] / "sn"], "--supernet": ["--run-dir", tmp_path / "r"]}[flag]
    line = one_error(capsys, "search", "--model", m, *args, flag, "", "--calib-text", text, *SEARCH)
    assert f"{flag} must not be empty" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_new_run_directory_is_marked_and_an_empty_one_is_adopted(made, tmp_path, capsys):
    _, m, text = made
    (tmp_path / "empty").mkdir()
    for run in (tmp_path / "new", tmp_path / "empty"):
        succeeds(capsys, "search", "--model", m, "--supernet", made[0] / "sn", "--run-dir", run, "--calib-text", text,
                 *SEARCH)
        assert (run / ".sparsearch-run").is_file() and not (run / ".sparsearch.lock").exists()
        succeeds(capsys, "search", "--model", m, "--supernet", made[0] / "sn", "--run-dir", run, "--calib-text", text,
                 *SEARCH)  # its own run directory: reset and searched again


HOLD = """
import sys, time
from sparsearch.base import rundir
rundir.lock(sys.argv[1], "run directory")
print("held", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("kind, folders, held, words", [
    *[(kind, ("sn", "run"), "run", "in use by process {pid}") for kind in ("search", "export", "report", "heal")],
    ("build", ("partial",), "partial", "supernet {folder} is in use by process {pid}"),
])
def test_a_second_writer_is_told_the_holders_pid(made, tmp_path, capsys, kind, folders, held, words):
    tmp = copied(made, tmp_path, *folders)
    holder = _holder(tmp / held)
    try:
        before = tree(tmp)
        line = one_error(capsys, *_command(made, tmp, kind))
        assert words.format(folder=tmp / held, pid=holder.pid) in line, line
        assert tree(tmp) == before
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_sigkilled_writer_is_taken_over(made, tmp_path, capsys):
    tmp = copied(made, tmp_path, "sn", "run")
    holder = _holder(tmp / "run")
    assert (tmp / "run" / ".sparsearch.lock").read_text().strip() == str(holder.pid)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert (tmp / "run" / ".sparsearch.lock").exists()  # left behind, but no longer held
    succeeds(capsys, *_command(made, tmp, "search"))
    assert not (tmp / "run" / ".sparsearch.lock").exists()


def test_a_killed_cli_run_leaves_its_run_directory_to_the_next(made, tmp_path):
    """A real search process is SIGKILLed while it holds its run directory; the next one resumes."""
    _, m, text = made
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def cmd(generations: int, *extra: str) -> list[str]:
        return [sys.executable, "-m", "sparsearch.launch.cli", "search", "--model", str(m), "--supernet",
                str(made[0] / "sn"), "--run-dir", str(run), "--calib-text", str(text), *SEARCH,
                "--generations", str(generations), "--patience", "0", *extra]

    proc = subprocess.Popen(cmd(400), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 120
    while not (run / "history.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    r = subprocess.run(cmd(2, "--resume"), env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and f"in use by process {proc.pid}" in r.stderr, r.stderr  # alive: refused
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    r = subprocess.run(cmd(2, "--resume"), env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr  # the kernel released the dead process's lock: it resumes
    assert not (run / ".sparsearch.lock").exists()


# -- 5. a superseded TPE ask says why -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["shift", "repair"])
def test_superseded_tpe_asks_are_pruned_with_their_reason(tmp_path, mode):
    from optuna.trial import TrialState

    from sparsearch.search.budget import Budget, CostModel
    from sparsearch.search.tpe import TPEConfig, TPEEngine
    from tests.helpers.synthetic import SyntheticFitness, synthetic_space

    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)

    def engine(trials: int) -> TPEEngine:
        return TPEEngine(space, budget, SyntheticFitness(space), TPEConfig(trials=trials, startup_trials=3,
                         budget_mode=mode), run_dir=str(tmp_path), seed=0, log=None)

    engine(8).run()
    study = engine(8)
    study._open(fresh=False)
    left = study.study.ask()  # a driver killed during its ask leaves a running trial
    left.set_user_attr("step", 8)
    resumed = engine(10)
    resumed.run(resume=True)
    trials = resumed.study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING)]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["reason"].startswith("superseded: ") for t in pruned)
    assert any("left running by an interrupted run" in t.user_attrs["reason"] for t in pruned)
    assert any("told as its own complete trial" in t.user_attrs["reason"] for t in pruned)
    assert sorted(t.user_attrs["step"] for t in trials if t.state == TrialState.COMPLETE) == list(range(10))
