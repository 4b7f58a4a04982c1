"""`sparsearch plan`: supernet disk from the config alone, and engines' evaluation counts."""

import json

import pytest
import torch

from tests.helpers.tiny import ARCHS, tiny_model
from sparsearch.launch.cli import main
from sparsearch.search.registry import ENGINES, make_engine
from sparsearch.supernet import SupernetConfig, build_supernet
from sparsearch.supernet.modules import cache_keyword, output_cache
from sparsearch.fitness.data import sampling_cache
from sparsearch.launch.plan import ModelShape, disk_bytes, planned_space, sampling_plan
from tests.helpers.synthetic import (SyntheticFitness, make_budget, quick_config, search_engines, synthetic_extras,
                                     synthetic_space)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("balanced", [False, True])
def test_planned_disk_is_within_5_percent_of_a_build(arch, balanced, tmp_path, tokens):
    model = tiny_model(arch, layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=4)
    cfg = SupernetConfig(batch_size=4, mlp_alignment=8, balanced_heads=balanced)
    store = build_supernet(model, tokens, str(tmp_path / "sn"), cfg, progress=False)
    shape = ModelShape.from_config(model.config)
    planned = planned_space(shape, cfg)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert planned.units == store.space().units
    assert disk_bytes(shape, cfg, planned) == pytest.approx(store.new_bytes, rel=0.05)
    if balanced:  # no removal order to guess: the same levels and (header bytes included) the same disk
        assert planned.levels == store.space().levels
        assert disk_bytes(shape, cfg, planned) == store.new_bytes


def test_plan_needs_only_a_config_json(tmp_path, capsys):
    model = tiny_model("llama", layers=4)
    model.config.save_pretrained(tmp_path / "cfg")  # no weights, no tokenizer
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["config.json"]
    args = ["plan", "--model", str(tmp_path / "cfg"), "--engine", "evolution", "--generations", "5",
            "--offspring", "4", "--schedule", "4:64,1:256", "--calib-samples", "16", "--calib-seqlen", "32"]
    assert main(args) == 0
    default = json.loads(capsys.readouterr().out)["search"]
    # the default start: the knapsack's 8 units x 8 levels + 1 probes on the first stage, the allocation
    # scored on the last; on the validation split (4 x 256 tokens): 5 generations' bests, the start, the
    # uniform genome and the final best
    assert default["init"] == "knapsack"
    assert default["evaluations_per_stage"] == {"0": 20 + 65, "1": 27 + 1, "validation": 5 + 1 + 2}
    assert default["forward_tokens"] == 85 * 64 + 28 * 256 + 8 * 1024
    assert main(args + ["--init", "uniform", "--validation", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["supernet"]["units"] == 8 and out["supernet"]["disk_bytes"] > 0
    assert out["build"]["calibration_tokens"] == 16 * 32 and out["build"]["peak_memory_mib"] > out["build"]["memory"]["model_mib"]
    # evolution, 5 generations: 4 offspring at stage 0, their 4 survivors and the parent (fresh data) at
    # stage 1; and the first parent and the result on the reference data
    assert out["search"]["evaluations_per_stage"] == {"0": 20, "1": 27}
    assert out["search"]["forward_tokens"] == 20 * 64 + 27 * 256
    assert [s["tokens"] for s in out["evaluation"]] == [64, 256]


@pytest.mark.parametrize("name", [*search_engines(), "uniform"])
def test_planned_evaluations_bound_what_a_run_does(name, tmp_path):
    space = synthetic_space()
    config = quick_config(name)
    engine_cls = ENGINES[name].engine
    fit = SyntheticFitness(space)
    engine = make_engine(name, space, make_budget(space), fit, config, run_dir=str(tmp_path), log=None,
                         **synthetic_extras(name))
    engine.run()
    done: dict[int, int] = {}
    for r in engine.files.evaluations():
        done[r["stage"]] = done.get(r["stage"], 0) + 1
    planned = engine_cls.planned_evaluations(config, fit.survivors, space)
    assert set(done) <= set(planned)
    for stage, n in done.items():
        assert n <= planned[stage], (stage, n, planned)
    assert sum(done.values()) >= 0.5 * sum(planned.values())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planned_sampling_kv_cache_is_the_cache_a_batch_fills(arch, dtype):
    """The KV cache term of the sampling plan equals the bytes of the cache that sampling fills
    with a batch of full-length sequences (one sample batch of 3 from 5 sequences, 40 tokens; the
    tiny Mistral's sliding-window layers hold its 16 positions)."""
    model = tiny_model(arch, layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=4).to(dtype)
    with torch.no_grad():
        cache = output_cache(model(input_ids=torch.randint(0, 128, (3, 40)), use_cache=True,
                                   **{cache_keyword(model): sampling_cache(model, 40)}))
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    assert len(tensors) == 2 * 3 and all(t.dtype == dtype for t in tensors)
    planned = sampling_plan(ModelShape.from_config(model.config, str(dtype).replace("torch.", "")), samples=5, seqlen=40,
                            sample_batch=3)
    assert planned["sequences_at_once"] == 3
    assert planned["kv_cache_bytes"] == sum(t.numel() * t.element_size() for t in tensors)
    assert planned["peak_memory_mib"] > planned["memory"]["model_mib"] + planned["memory"]["kv_cache_mib"]


def test_plan_has_a_sampling_phase_only_when_the_calibration_is_sampled(tmp_path, capsys):
    model = tiny_model("llama", layers=4)
    model.config.save_pretrained(tmp_path / "cfg")
    args = ["plan", "--model", str(tmp_path / "cfg"), "--calib-samples", "16", "--calib-seqlen", "32"]
    assert main(args + ["--calib-sample-batch", "8"]) == 0  # the default source samples
    sampled = json.loads(capsys.readouterr().out)["sampling"]
    # 4 layers x keys and values x 2 KV heads x 8 dims x float32, for 8 sequences of 32 tokens
    assert sampled["sequences_at_once"] == 8 and sampled["kv_cache_bytes"] == 4 * 2 * 2 * 8 * 4 * 8 * 32
    assert main(args + ["--calib-text", str(tmp_path / "any.txt")]) == 0  # a text is read, not sampled (nor opened)
    assert "sampling" not in json.loads(capsys.readouterr().out)
