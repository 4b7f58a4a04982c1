import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsearch.launch.cli import main
from sparsearch.search.registry import BEST_STARTS, ENGINES

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_error_line(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsearch: error: "), err
    return err[0]


def test_unknown_model_is_one_line_error(capsys, tmp_path):
    code = main(["supernet", "--model", "no-such-model", "--out", str(tmp_path / "sn"), "--quiet"])
    assert "unknown model 'no-such-model'" in _one_error_line(capsys, code)
    assert not (tmp_path / "sn").exists()
    code = main(["supernet", "--model", str(tmp_path), "--out", str(tmp_path / "sn"), "--quiet"])
    assert "without config.json" in _one_error_line(capsys, code)


def test_unsupported_architecture_from_folder(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300)).save_pretrained(tmp_path / "gpt2")
    from tests.helpers.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    code = main(["supernet", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "sn"), "--quiet",
                 "--calib-samples", "2", "--calib-seqlen", "8"])
    assert "unsupported architecture gpt2; supported: llama, mistral, qwen2, qwen3" in _one_error_line(capsys, code)
    assert not (tmp_path / "sn").exists()


def test_bad_values_are_one_line_errors(capsys, tmp_path, model_dir):
    m = str(model_dir / "model")
    capsys.readouterr()
    code = main(["supernet", "--model", m, "--out", str(tmp_path / "a"), "--attn-ladder", "0.3", "--quiet"])
    assert "ladder step" in _one_error_line(capsys, code)
    code = main(["supernet", "--model", m, "--out", str(tmp_path / "a"), "--calib-text", str(tmp_path / "none.txt"), "--quiet"])
    assert "text file not found" in _one_error_line(capsys, code)
    code = main(["search", "--model", m, "--supernet", str(tmp_path / "sn"), "--run-dir", str(tmp_path / "r"),
                 "--eval-text", str(tmp_path / "none.txt"), "--quiet"])
    assert _one_error_line(capsys, code)
    assert not (tmp_path / "r").exists()
    preset = tmp_path / "p.yaml"
    preset.write_text("calib_samples: 4\nno_such_flag: 1\n")
    code = main(["supernet", "--config", str(preset), "--out", str(tmp_path / "a")])
    assert "unknown keys no_such_flag" in _one_error_line(capsys, code)
    assert not (tmp_path / "a").exists()


def test_supernet_eval_and_run_on_tiny_model(capsys, tmp_path, model_dir):
    m, text = str(model_dir / "model"), str(model_dir / "text.txt")
    preset = tmp_path / "tiny.yaml"
    preset.write_text(f"calib-text: {text}\ncalib-samples: 4\ncalib-seqlen: 32\nmlp-alignment: 8\nbatch-size: 2\n")
    sn = tmp_path / "sn"
    assert main(["supernet", "--config", str(preset), "--model", m, "--out", str(sn), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"supernet: {sn} (4 units, 9 levels each" in out and "MiB on disk" in out
    manifest = json.loads((sn / "manifest.json").read_text())
    assert manifest["calibration"]["samples"] == 4 and manifest["calibration"]["source"] == "text"

    assert main(["eval", "--model", m, "--data", text, "--seqlen", "32", "--quiet"]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", m, "--data", text, "--seqlen", "32", "--quiet",
                 "--supernet", str(sn), "--target-sparsity", "0.5"]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half["sparsity"] == pytest.approx(0.5, abs=0.1)
    assert half["params"] < dense["params"]
    assert half["tokens"] == dense["tokens"] and half["perplexity"] > 1.0

    run = tmp_path / "run"
    assert main(["run", "--config", str(preset), "--model", m, "--run-dir", str(run), "--supernet", str(sn),
                 "--target-sparsity", "0.25", "--generations", "3", "--schedule", "4:64,1:128", "--quiet",
                 "--eval-text", text, "--eval-seqlen", "32"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("best_genome", "per_layer", "params", "fitness", "evaluations", "wall_time_s"):
        assert key in summary
    assert 0 < summary["fitness"]["kl"] <= summary["uniform"]["kl"] and len(summary["per_layer"]) == 2
    assert summary["sparsity"] == pytest.approx(0.25, abs=0.1)
    assert (run / "history.jsonl").read_text().count("\n") == 3
    # wall time per phase: each one the run went through, exclusive, adding up to at most the wall time
    timings = summary["timings"]
    assert {"load", "sampling", "teacher", "probes", "search", "selection", "export"} <= set(timings)
    assert "build" not in timings  # the supernet was given, finished
    assert all(t >= 0 for t in timings.values()) and sum(timings.values()) <= summary["wall_time_s"] + 0.5
    assert (run / "sparsity.png").is_file() and (run / "fitness.png").is_file()
    (run / "sparsity.png").unlink()
    assert main(["report", "--run-dir", str(run)]) == 0
    assert (run / "sparsity.png").is_file()

    # run exported the best model; it loads, is smaller, and `eval` reads it
    card = (run / "export" / "README.md").read_text()
    assert "| layer | attention heads | MLP channels |" in card and str(summary["best_genome"]) in card
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "export"), "--data", text, "--seqlen", "32", "--quiet"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["params"] < dense["params"]
    # the run's held-out perplexity is the exported model's, measured on the same windows
    heldout = summary["heldout"]
    assert heldout["tokens"] == exported["tokens"] and heldout["perplexity"] == pytest.approx(exported["perplexity"], rel=1e-4)
    assert heldout["uniform_perplexity"] > 1.0 and "Held-out perplexity" in card
    assert set(heldout["starts_perplexity"]) == set(summary["baselines"]) == {"knapsack"}  # the default start
    assert heldout["starts_perplexity"]["knapsack"] > 1.0
    assert main(["export", "--run-dir", str(run), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (run / "export" / "model.safetensors").read_bytes()
    code = main(["export", "--run-dir", str(run), "--out", str(tmp_path / "bad"), "--genome", "pareto:5"])
    assert "Pareto front has 0 points" in _one_error_line(capsys, code)


def test_mismatched_supernet_is_refused(capsys, tmp_path, model_dir):
    from tests.helpers.tiny import tiny_model, tiny_tokenizer

    m, text = str(model_dir / "model"), str(model_dir / "text.txt")
    sn = tmp_path / "sn"
    assert main(["supernet", "--model", m, "--out", str(sn), "--calib-text", text, "--calib-samples", "2",
                 "--calib-seqlen", "16", "--mlp-alignment", "8", "--quiet"]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    tok = tiny_tokenizer()
    tiny_model("llama", seed=5, vocab_size=len(tok), max_position_embeddings=128).save_pretrained(other)
    tok.save_pretrained(other)
    capsys.readouterr()
    code = main(["eval", "--model", str(other), "--data", text, "--seqlen", "16", "--supernet", str(sn),
                 "--target-sparsity", "0.5", "--quiet"])
    assert "built for another model" in _one_error_line(capsys, code)


def test_unreachable_hub_id_is_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["supernet", "--model", "no-such-org/no-such-model", "--out", str(tmp_path / "sn"), "--quiet"])
    line = _one_error_line(capsys, code)
    assert "no such model folder 'no-such-org/no-such-model'" in line
    assert "no model of that id could be loaded from the hub" in line


@pytest.mark.parametrize("engine", list(ENGINES))
def test_search_command_engines_and_resume(engine, capsys, tmp_path, model_dir):
    m, text = str(model_dir / "model"), str(model_dir / "text.txt")
    sn = tmp_path / "sn"
    common = ["--model", m, "--calib-text", text, "--calib-samples", "4", "--calib-seqlen", "32", "--quiet"]
    assert main(["supernet", *common, "--out", str(sn), "--mlp-alignment", "8"]) == 0
    run = tmp_path / "run"
    args = ["search", *common, "--supernet", str(sn), "--run-dir", str(run), "--engine", engine,
            "--schedule", "2:64,1:128", "--generations", "2", "--population", "4", "--trials", "4",
            "--rounds", "2", "--offspring", "3"]
    assert main(args) == 0
    first = json.loads((run / "summary.json").read_text())
    assert main(args + ["--resume"]) == 0  # a finished run resumes to the same answer
    again = json.loads((run / "summary.json").read_text())
    assert again["best_genome"] == first["best_genome"] and again["evaluations"] == first["evaluations"]
    if engine == "nsga2":
        assert first["pareto"] and (run / "pareto.png").is_file()
    if engine == "tyr":
        assert (run / "tyr" / "round1" / "manifest.json").is_file()
        assert first["supernet"].endswith("round1")
    if ENGINES[engine].engine.one_shot:  # the start of its name, scored alone
        assert first["baselines"][engine]["genome"] == first["best_genome"]
        assert first["fitness"]["kl"] == first["baselines"][engine]["kl"]
        assert (first["evaluations"] == 1) != ENGINES[engine].engine.probes_fitness


def test_training_aware_search_trains_each_candidate_on_tokens_it_is_not_scored_on(capsys, tmp_path, model_dir):
    """A schedule with training stages (``survivors:tokens:train_tokens``) runs through the command
    line: the run keeps its training tokens (none of them a fitness sequence), the final stage
    scores trained copies (the uniform genome's KL differs from the untrained schedule's), and
    ``--resume`` with another training setting is refused naming it."""
    import random

    from safetensors.torch import load_file

    m = str(model_dir / "model")
    words = "prune layer head channel budget search model token sparse dense block".split()
    rng = random.Random(0)
    text = tmp_path / "varied.txt"  # not periodic, so that windows at different offsets differ
    text.write_text(" ".join(rng.choice(words) + str(rng.randrange(100)) for _ in range(3000)))
    common = ["--model", m, "--calib-text", str(text), "--calib-samples", "4", "--calib-seqlen", "32", "--quiet"]
    sn = tmp_path / "sn"
    assert main(["supernet", *common, "--out", str(sn), "--mlp-alignment", "8"]) == 0
    search = ["search", *common, "--supernet", str(sn), "--generations", "1", "--offspring", "2"]
    trained_run, plain_run = tmp_path / "trained", tmp_path / "plain"
    trained_args = [*search, "--run-dir", str(trained_run), "--schedule", "2:64,1:128:256", "--train-lr", "1e-2"]
    assert main(trained_args) == 0
    assert main([*search, "--run-dir", str(plain_run), "--schedule", "2:64,1:128"]) == 0

    train = load_file(str(trained_run / "train_tokens.safetensors"))["tokens"]
    fit = load_file(str(trained_run / "fitness_tokens.safetensors"))["tokens"]
    assert train.shape == (8, 32)  # 256 training tokens in sequences of 32
    assert not {tuple(r) for r in train.tolist()} & {tuple(r) for r in fit.tolist()}
    assert torch.equal(fit, load_file(str(plain_run / "fitness_tokens.safetensors"))["tokens"])
    assert not (plain_run / "train_tokens.safetensors").exists()

    trained, plain = (json.loads((r / "summary.json").read_text()) for r in (trained_run, plain_run))
    assert trained["uniform"]["genome"] == plain["uniform"]["genome"]
    assert trained["uniform"]["kl"] != pytest.approx(plain["uniform"]["kl"], rel=1e-3)
    capsys.readouterr()
    code = main([*trained_args[:-1], "1e-3", "--resume"])
    assert "cannot resume: training was" in _one_error_line(capsys, code)
    assert main([*trained_args, "--resume"]) == 0  # the same settings resume to the same answer
    again = json.loads((trained_run / "summary.json").read_text())
    assert again["best_genome"] == trained["best_genome"] and again["evaluations"] == trained["evaluations"]


def test_search_can_start_from_the_best_baseline(capsys, tmp_path, model_dir):
    m, text = str(model_dir / "model"), str(model_dir / "text.txt")
    common = ["--model", m, "--calib-text", text, "--calib-samples", "4", "--calib-seqlen", "32", "--quiet"]
    sn = tmp_path / "sn"
    assert main(["supernet", *common, "--out", str(sn), "--mlp-alignment", "8"]) == 0
    run = tmp_path / "run"
    assert main(["search", *common, "--supernet", str(sn), "--run-dir", str(run), "--engine", "evolution",
                 "--init", "best", "--schedule", "2:64,1:128", "--generations", "2", "--offspring", "3",
                 "--target-sparsity", "0.5"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    baselines = summary["baselines"]
    assert set(baselines) == set(BEST_STARTS)  # the starts that cost no evaluations
    for b in baselines.values():
        assert summary["target_sparsity"] <= b["sparsity"] <= summary["target_sparsity"] + 0.01 + 1e-9
    # elitism from the best baseline: the search never ends worse than its start
    assert summary["fitness"]["kl"] <= min(b["kl"] for b in baselines.values()) + 1e-9
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[0]["evaluations"] + 3 <= summary["evaluations"]  # the baselines' evaluations are counted


def test_shipped_presets_load_into_the_configs(tmp_path):
    import yaml

    from sparsearch.launch.cli import parse_args
    from sparsearch.launch.runconfig import run_config

    root = Path(__file__).resolve().parents[1] / "launch" / "presets"
    presets = sorted(root.glob("*.yaml"))
    assert presets
    for preset in presets:
        raw = yaml.safe_load(preset.read_text())
        _, o = parse_args(["run", "--config", str(preset), "--run-dir", str(tmp_path)])
        run = run_config(o, log=print)
        search, calib, supernet, fitness = run.search, run.calibration, run.supernet, run.fitness
        assert search.engine == raw["engine"] and search.target_sparsity == raw["target-sparsity"]
        assert search.engine_config.generations == raw["generations"]
        assert search.engine_config.offspring == raw["offspring"]
        assert fitness.schedule == raw["schedule"] and calib.samples == raw["calib-samples"]
        assert supernet.mlp_alignment == raw["mlp-alignment"] and run.model == raw["model"]
        # flags given on the command line win over the preset
        _, o = parse_args(["run", "--config", str(preset), "--generations", "7", "--calib-text", "t.txt"])
        run = run_config(o, log=print)
        assert run.search.engine_config.generations == 7 and run.calibration.source == "text"


def test_a_command_builds_each_config_once_into_a_validated_run_config(tmp_path, monkeypatch, capsys):
    from sparsearch.base.errors import ConfigError
    from sparsearch.launch.config import SearchConfig
    from sparsearch.launch.options import Resolved
    from sparsearch.launch.runconfig import RunConfig
    from tests.helpers.tiny import tiny_model

    built, real = [], Resolved.config
    monkeypatch.setattr(Resolved, "config", lambda self, cls, **kw: built.append(cls) or real(self, cls, **kw))
    tiny_model("llama", layers=2).config.save_pretrained(tmp_path / "cfg")
    assert main(["plan", "--model", str(tmp_path / "cfg"), "--engine", "evolution", "--init", "knapsack"]) == 0
    assert len(built) == len(set(built)) >= 8, built  # search, engine, start, supernet, calibration, fitness, ...
    with pytest.raises(ConfigError, match="seed must be within"):
        RunConfig(seed=-1)
    with pytest.raises(ConfigError, match="search.seed must be the run's seed 0"):
        RunConfig(search=SearchConfig(seed=1))
    with pytest.raises(ConfigError, match="complete"):
        RunConfig(search=SearchConfig())


def test_flag_defaults_are_the_config_defaults():
    """There is one default per setting: a command line with no flags builds the dataclasses' defaults."""
    from sparsearch.fitness.config import FitnessConfig, TrainConfig
    from sparsearch.fitness.data import CalibrationConfig
    from sparsearch.launch.cli import parse_args
    from sparsearch.launch.cluster import ClusterConfig
    from sparsearch.launch.config import SearchConfig
    from sparsearch.launch.heldout import HeldoutConfig
    from sparsearch.launch.runconfig import run_config
    from sparsearch.supernet.config import SupernetConfig

    for name, entry in ENGINES.items():
        _, o = parse_args(["run", "--engine", name])
        cfg = run_config(o, log=print).search
        assert cfg == SearchConfig(engine=name) and cfg.engine_config == entry.config()
    _, o = parse_args(["run"])
    run = run_config(o)
    assert run.supernet == SupernetConfig() and run.fitness == FitnessConfig() and run.train == TrainConfig()
    assert run.calibration == CalibrationConfig() and run.heldout == HeldoutConfig() and run.cluster == ClusterConfig()
    assert run.heal is None and run.model == "smollm2-135m" and run.progress
    r = _run("-m", "sparsearch.launch.cli", "search", "--help")
    assert "--generations GENERATIONS" in r.stdout and "(default: 20)" in r.stdout


def test_config_errors_name_the_setting_and_the_value(capsys, tmp_path):
    code = main(["run", "--generations", "-3", "--run-dir", str(tmp_path / "r")])
    assert "generations must be >= 0, got -3" in _one_error_line(capsys, code)
    code = main(["run", "--schedule", "4:128,2:64", "--run-dir", str(tmp_path / "r")])
    assert "schedule" in _one_error_line(capsys, code)
    code = main(["supernet", "--out", str(tmp_path / "sn"), "--damping", "2"])
    assert "damping must be within [0, 1), got 2.0" in _one_error_line(capsys, code)
    preset = tmp_path / "p.yaml"
    preset.write_text("generations: many\n")
    code = main(["run", "--config", str(preset)])
    assert "--generations takes int values, got 'many'" in _one_error_line(capsys, code)
    code = main(["run", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in _one_error_line(capsys, code)
    assert not (tmp_path / "r").exists() and not (tmp_path / "sn").exists()


def test_interrupted_supernet_build_resumes_with_its_stored_calibration(capsys, tmp_path, model_dir, monkeypatch):
    from sparsearch.launch import tokens as run_tokens
    from sparsearch.supernet.store import SupernetStore

    m = str(model_dir / "model")
    args = ["supernet", "--model", m, "--out", str(tmp_path / "sn"), "--calib-samples", "3", "--calib-seqlen", "16",
            "--mlp-alignment", "8"]
    original = SupernetStore.write_unit
    calls = []

    def dying(self, unit, variants):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(unit.name)
        return original(self, unit, variants)

    monkeypatch.setattr(SupernetStore, "write_unit", dying)
    assert main(args) == 130
    monkeypatch.setattr(SupernetStore, "write_unit", original)
    sampled = []
    real = run_tokens.draw
    monkeypatch.setattr(run_tokens, "draw", lambda *a, **k: sampled.append(1) or real(*a, **k))
    assert main(args) == 0
    assert sampled == []  # the self-generated calibration was not sampled again
    assert SupernetStore.open(tmp_path / "sn").manifest["complete"]


def test_a_self_calibrated_search_scores_on_pythons_reference_text(capsys, tmp_path, model_dir):
    """The default: the supernet calibrated on the model's own samples, the search's fitness and
    validation tokens windows of Python's reference text (``pydoc_data``); ``--fitness-source
    calibration`` scores on the model's samples instead; a resume under another source is refused
    naming it."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from sparsearch.fitness.data import python_docs_text, tokenize_text

    m = str(model_dir / "model")
    common = ["--model", m, "--calib-samples", "4", "--calib-seqlen", "32", "--quiet"]
    sn = tmp_path / "sn"
    assert main(["supernet", *common, "--out", str(sn), "--mlp-alignment", "8"]) == 0
    search = ["search", *common, "--supernet", str(sn), "--schedule", "1:64", "--generations", "1",
              "--offspring", "2", "--validation", "2"]
    docs, own = tmp_path / "docs", tmp_path / "own"
    assert main([*search, "--run-dir", str(docs)]) == 0
    assert main([*search, "--run-dir", str(own), "--fitness-source", "calibration"]) == 0
    summary = json.loads((docs / "summary.json").read_text())
    assert summary["calibration"]["source"] == "self" and summary["fitness_source"]["source"] == "python-docs"
    assert json.loads((own / "summary.json").read_text())["fitness_source"]["source"] == "self"

    ids = tokenize_text(python_docs_text(), AutoTokenizer.from_pretrained(m))
    text_windows = {tuple(ids[i * 32:(i + 1) * 32].tolist()) for i in range(ids.numel() // 32)}
    for split in ("fitness", "validation"):
        rows = {tuple(r) for r in load_file(str(docs / f"{split}_tokens.safetensors"))["tokens"].tolist()}
        assert len(rows) == {"fitness": 8, "validation": 4}[split] and rows <= text_windows, split
        sampled = {tuple(r) for r in load_file(str(own / f"{split}_tokens.safetensors"))["tokens"].tolist()}
        assert not sampled & text_windows, split  # the model's own samples are not windows of the text

    capsys.readouterr()
    code = main([*search, "--run-dir", str(docs), "--fitness-source", "calibration", "--resume"])
    assert "cannot resume: fitness_source was" in _one_error_line(capsys, code)
    code = main([*search, "--run-dir", str(docs), "--calib-text", str(model_dir / "text.txt"), "--resume"])
    assert "cannot resume: calibration was" in _one_error_line(capsys, code)
