"""``sparsearch heal``: distillation lowers the KL to the dense model, LoRA and full exports load
with the trained model's logits, a SIGKILLed run resumes to the uninterrupted run's weights, and
neither the dense model nor the supernet is modified."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sparsearch.fitness.data import CalibrationConfig
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.launch.cli import main
from sparsearch.launch.heal import HealConfig, heal
from sparsearch.base.errors import SparsearchError
from sparsearch.supernet.models import load_model


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "verified.json"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, model_dir):
    """A tiny model's 50% run (supernet, search, plain export)."""
    root = tmp_path_factory.mktemp("heal")
    m, text = str(model_dir / "model"), str(model_dir / "text.txt")
    assert main(["run", "--model", m, "--run-dir", str(root / "run"), "--calib-text", text, "--calib-samples", "4",
                 "--calib-seqlen", "32", "--mlp-alignment", "8", "--batch-size", "2", "--target-sparsity", "0.5",
                 "--generations", "2", "--schedule", "4:64,1:128", "--quiet"]) == 0
    return root / "run", m, text


def _fresh_run(searched, tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "summary.json").write_bytes((searched[0] / "summary.json").read_bytes())
    return run


def _top_k_kl(model, cache: TeacherCache) -> float:
    with torch.no_grad():
        return cache.kl(slice(None), model(input_ids=cache.tokens, use_cache=False).logits).mean().item()


@pytest.mark.parametrize("method", ["lora", "full", "full-bf16", "lora-online", "full-self"])
def test_heal_lowers_the_kl_and_exports_the_trained_model(method, searched, tmp_path, monkeypatch):
    run0, m, text = searched
    run = _fresh_run(searched, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    dtype = "bfloat16" if method.endswith("bf16") else "float32"
    model, tok = load_model(m, dtype=dtype)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_files = _digest(Path(m)), _digest(Path(summary["supernet"]))
    cfg = HealConfig(tokens=8192, seqlen=32, full=method.startswith("full"), lr=1e-3 if method.startswith("full") else 1e-2,
                     teacher_topk=0 if method.endswith("online") else 16)
    calib = CalibrationConfig(source="self") if method.endswith("self") else CalibrationConfig(source="text", location=text)
    if method.endswith("self"):  # no second pass of the teacher over its own samples
        monkeypatch.setattr(TeacherCache, "compute", lambda *a, **k: pytest.fail("teacher pass over sampled tokens"))
    healed = heal(run, tmp_path / "healed", cfg, calib, load=lambda spec: (model, tok), dtype=dtype)

    # the dense model (in memory and on disk) and the supernet are untouched
    state = model.state_dict()
    assert state.keys() == dense_state.keys() and all(torch.equal(state[k], dense_state[k]) for k in state)
    assert (_digest(Path(m)), _digest(Path(summary["supernet"]))) == before_files

    # the healed export loads with the healed model's logits and its card says how it was healed
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "healed", trust_remote_code=True, dtype=getattr(torch, dtype)).eval()
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, healed.model(input_ids=ids).logits, rtol=0, atol=0)
    assert sum(p.numel() for p in loaded.parameters()) == healed.summary["params"]
    card = (tmp_path / "healed" / "README.md").read_text()
    assert "## Healing" in card and f"{cfg.steps} steps" in card and str(summary["best_genome"]) in card
    assert json.loads((run / "heal.json").read_text())["steps"] == cfg.steps == 64

    # distillation lowered the KL to the dense model on its training tokens (vs the plain export)
    data = load_file(str(run / "heal" / "data.safetensors"))
    with torch.no_grad():
        logits = load_model(m)[0](input_ids=data["tokens"]).logits
    cache = TeacherCache.from_logits(data["tokens"], logits, 16)
    if method.endswith("self"):  # sampled sequences, and the teacher logits kept while sampling them
        assert not set(data["tokens"].flatten().tolist()) & set(tok.all_special_ids)
        # the kept entries are a top 16 of the full forward pass: its logits at the kept indices are
        # the kept logits, and those are its 16 largest (indices of near-ties, equal within the
        # tolerance, may come in either order: sampling decodes incrementally, in other kernels)
        torch.testing.assert_close(logits.gather(-1, data["top_index"]), data["top_logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(data["top_logits"], cache.top_logits, rtol=1e-5, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(run0 / "export", trust_remote_code=True).eval()
    kl_plain, kl_healed = _top_k_kl(plain, cache), _top_k_kl(loaded.float(), cache)
    assert kl_healed < 0.8 * kl_plain, (kl_plain, kl_healed)
    first, last = healed.summary["loss"]["history"][:8], healed.summary["loss"]["history"][-8:]
    assert sum(last) < sum(first)
    if method.startswith("lora"):  # adapters merged into the projections; embeddings stay frozen
        p_state, h_state = plain.state_dict(), loaded.float().state_dict()
        assert torch.equal(p_state["model.embed_tokens.weight"], h_state["model.embed_tokens.weight"])
        assert not torch.equal(p_state["model.layers.0.mlp.down_proj.weight"], h_state["model.layers.0.mlp.down_proj.weight"])


def _heal_cli(run: Path, text: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sparsearch.launch.cli", "heal", "--run-dir", str(run), "--calib-text", text,
            "--tokens", "25600", "--seqlen", "32", "--lr", "1e-3", "--checkpoint-every", "7", "--quiet", *extra]


def test_sigkilled_heal_resumes_to_the_uninterrupted_weights(searched, tmp_path):
    _, _, text = searched
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = _fresh_run(searched, tmp_path / "ref")
    done = subprocess.run(_heal_cli(reference, text), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = (reference / "export-healed" / "model.safetensors").read_bytes()
    training = json.loads((reference / "heal.json").read_text())["train_seconds"]

    rng = random.Random(0)
    kills = 0
    for lineage in range(2):
        run = _fresh_run(searched, tmp_path / f"lineage{lineage}")
        resume: list[str] = []
        for _ in range(2):  # two kills in a row, each resumed by the next process
            proc = subprocess.Popen(_heal_cli(run, text, *resume), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            checkpoint = run / "heal" / "checkpoint.safetensors"
            seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
            while proc.poll() is None and (not checkpoint.exists() or checkpoint.stat().st_mtime_ns == seen):
                time.sleep(0.005)  # until this process has written a checkpoint
            time.sleep(rng.uniform(0, 0.5) * training)
            proc.kill()  # SIGKILL, at a random moment of training (or of the export)
            _, err = proc.communicate(timeout=300)
            if proc.returncode != -signal.SIGKILL:
                assert proc.returncode == 0, err
                break
            kills += 1
            export = run / "export-healed"  # whole or absent
            assert not export.exists() or {"config.json", "model.safetensors"} <= {f.name for f in export.iterdir()}
            resume = ["--resume"]
        done = subprocess.run(_heal_cli(run, text, "--resume"), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (run / "export-healed" / "model.safetensors").read_bytes() == expected, lineage
        assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    assert kills >= 3


def test_heal_refuses_a_started_run_without_resume_and_other_settings_with_it(searched, tmp_path):
    _, m, text = searched
    run = _fresh_run(searched, tmp_path)
    model, tok = load_model(m)
    calib = CalibrationConfig(source="text", location=text)
    cfg = HealConfig(tokens=256, seqlen=32)
    heal(run, tmp_path / "a", cfg, calib, load=lambda spec: (model, tok))
    with pytest.raises(SparsearchError, match="--resume continues it"):
        heal(run, tmp_path / "b", cfg, calib, load=lambda spec: (model, tok))
    with pytest.raises(SparsearchError, match=r"other settings \(heal\)"):
        heal(run, tmp_path / "b", HealConfig(tokens=512, seqlen=32), calib, load=lambda spec: (model, tok), resume=True)
    with pytest.raises(SparsearchError, match="exists and is not empty"):
        heal(run, tmp_path / "a", HealConfig(tokens=256, seqlen=32, lr=1e-3), calib, load=lambda spec: (model, tok))
    # resuming a finished run returns it; into another folder, it exports the last checkpoint again
    first = json.loads((run / "heal.json").read_text())
    again = heal(run, tmp_path / "a", cfg, calib, load=lambda spec: (model, tok), resume=True)
    assert again.summary == first
    heal(run, tmp_path / "b", cfg, calib, load=lambda spec: (model, tok), resume=True)
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()


def test_heal_command_line_errors_are_one_line(searched, capsys, tmp_path):
    run0, _, text = searched
    assert main(["heal", "--run-dir", str(tmp_path), "--quiet"]) == 2
    assert "no summary.json" in capsys.readouterr().err
    assert main(["heal", "--run-dir", str(run0), "--full", "--lora-rank", "8", "--quiet"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["heal", "--run-dir", str(run0), "--tokens", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsearch: error:") and "tokens" in err and err.count("\n") == 1


def test_run_heals_its_export_with_heal_tokens(searched, capsys, tmp_path):
    run0, m, text = searched
    run = tmp_path / "run"
    summary = json.loads((run0 / "summary.json").read_text())
    assert main(["run", "--model", m, "--run-dir", str(run), "--supernet", summary["supernet"], "--calib-text", text,
                 "--calib-seqlen", "32", "--calib-samples", "4", "--mlp-alignment", "8", "--batch-size", "2",
                 "--target-sparsity", "0.5", "--generations", "1", "--schedule", "4:64,1:128",
                 "--heal-tokens", "512", "--eval-text", text, "--eval-seqlen", "32", "--quiet"]) == 0
    healed = json.loads((run / "heal.json").read_text())
    assert healed["settings"]["heal"]["tokens"] == 512 and healed["settings"]["heal"]["seqlen"] == 32 and healed["settings"]["calibration"]["location"] == text
    assert healed["export"] == str(run / "export-healed") and (run / "export-healed" / "model.safetensors").is_file()
    # the held-out perplexity before healing is the plain export's, which the run measured on the same windows
    assert healed["perplexity"]["before"] == pytest.approx(json.loads((run / "summary.json").read_text())["heldout"]["perplexity"], rel=1e-5)


def test_heal_refuses_sequences_beyond_the_models_positions(searched, capsys, tmp_path):
    run = _fresh_run(searched, tmp_path)
    assert main(["heal", "--run-dir", str(run), "--seqlen", "4096", "--tokens", "4096", "--quiet"]) == 2
    assert "seqlen 4096 is beyond the model's 128 positions" in capsys.readouterr().err
    assert not (run / "export-healed").exists()
