import copy
import logging
import os
import stat

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from tests.helpers.tiny import ARCHS, tiny_model, tiny_tokenizer
from sparsearch.base.errors import SparsearchError
from sparsearch.supernet import Stitcher, SupernetConfig, build_supernet
from sparsearch.supernet.export import export


@pytest.fixture(scope="module", params=ARCHS)
def candidate(request, tmp_path_factory):
    arch = request.param
    model = tiny_model(arch, layers=3, tie_word_embeddings=arch in ("llama", "qwen3"))
    tokens = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(0))
    root = tmp_path_factory.mktemp(f"exp-{arch}")
    store = build_supernet(model, tokens, str(root / "sn"),
                           SupernetConfig(batch_size=3, mlp_alignment=8, store_dtype="float32"), progress=False)
    dense = copy.deepcopy(model)
    # dense, pruned and removed attention and MLP blocks
    genome = (0, 4, 8, 3, 5, 8)
    Stitcher(model, store).apply(genome)
    out = export(model, None, root / "export")
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    return arch, dense, model, loaded, out, tokens


def test_exported_logits_equal_stitched_candidate(candidate):
    _, _, stitched, loaded, _, tokens = candidate
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=tokens).logits, stitched(input_ids=tokens).logits,
                                   rtol=1e-5, atol=1e-5)


def test_removed_blocks_have_no_weights_and_model_is_smaller(candidate):
    _, dense, _, loaded, out, _ = candidate
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert not any(n.startswith("model.layers.1.self_attn.") for n in names)  # level 8: removed
    assert not any(n.startswith("model.layers.2.mlp.") for n in names)
    assert "model.layers.1.mlp.down_proj.weight" in names
    assert loaded.model.layers[1].self_attn is None and loaded.model.layers[2].mlp is None
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in dense.parameters())
    assert (out / "modeling_sparsearch.py").is_file()


def _greedy_without_cache(model, ids, steps):
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def test_generate_with_kv_cache_matches_full_recompute(candidate):
    _, _, stitched, loaded, _, tokens = candidate
    prompt = tokens[:2, :6]
    out = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                          pad_token_id=0)
    assert torch.equal(out, _greedy_without_cache(stitched, prompt, 8))


def test_left_padded_batch_generates_like_single_prompts(candidate):
    _, _, _, loaded, _, tokens = candidate
    long, short = tokens[0, :7], tokens[1, :4]
    ids = torch.stack([long, torch.cat([torch.zeros(3, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 7, [0, 0, 0] + [1] * 4])
    batch = loaded.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for row, prompt in ((0, long), (1, short)):
        single = loaded.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(batch[row, -5:], single[0, -5:])


def test_export_refuses_a_non_empty_folder(candidate, tmp_path):
    _, _, stitched, _, _, _ = candidate
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(SparsearchError, match="not empty"):
        export(stitched, None, tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_export_and_atomic_files_get_the_umask_modes_not_private_ones(candidate, tmp_path):
    """A server or a cluster node running as another user reads exports and run files."""
    from sparsearch.base.atomic import atomic_write

    _, _, stitched, _, _, _ = candidate
    old = os.umask(0o022)
    try:
        out = export(stitched, None, tmp_path / "shared")
        atomic_write(tmp_path / "summary.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644


def test_servable_genomes_export_the_nemotron_nas_schema(tmp_path):
    from sparsearch.supernet.models import load_model

    import json

    import dataclasses

    from sparsearch.launch.cli import parse_args
    from sparsearch.launch.session import Session
    from sparsearch.search.registry import ENGINES
    from sparsearch.search.starts import load

    _, o = parse_args(["supernet", "--out", "x", "--servable", "--mlp-ladder", "0,0.5,1"])
    cfg = o.config(SupernetConfig)
    assert cfg.attn_ladder.sparsities == (0.0, 1.0) and cfg.mlp_alignment == 256 and cfg.balanced_heads
    model = tiny_model("llama", layers=3, hidden_size=64, intermediate_size=512, head_dim=16)
    tokens = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(0))
    store_cfg = dataclasses.replace(cfg, store_dtype="float32", batch_size=3)
    store = build_supernet(model, tokens, str(tmp_path / "sn"), store_cfg, progress=False)
    # the first attention is offered only dense (vLLM's DeciLM needs attention in the first non-empty layer)
    assert [len(lv) for lv in store.space().levels] == [1, 3, 2, 3, 2, 3]
    with pytest.raises(SparsearchError, match="outside its ladder"):
        Stitcher(copy.deepcopy(model), store).apply((1, 0, 0, 0, 0, 0))
    with pytest.raises(SparsearchError, match="tyr refines"):  # Týr's finer attention ladders are not servable
        load(ENGINES["tyr"].extras)(Session(None, store, None, None, tmp_path, None))
    Stitcher(model, store).apply((0, 1, 1, 2, 0, 0))
    out = export(model, tiny_tokenizer(), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    # loads name the config class of that model type (no model-type mismatch warning), and
    # sparsearch's own load reads the tokenizer without asking to run the folder's code
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        load_model(str(out))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [r.getMessage() for r in records if "model of type" in r.getMessage()]
    blocks = config["block_configs"]
    assert [b["attention"]["no_op"] for b in blocks] == [False, True, False]
    assert [b["ffn"]["ffn_mult"] for b in blocks] == [6.0, None, 12.0]  # 256 and 512 channels at hidden 64
    assert blocks[0]["attention"]["n_heads_in_group"] == 2 and config["num_attention_heads"] == 4
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=tokens).logits, model(input_ids=tokens).logits)


def test_nemotron_nas_rules():
    from sparsearch.supernet.nemotron_nas import block_configs, width_to_ffn_mult

    dense = {"heads": 4, "kv_heads": 2, "kv_index": [0, 0, 1, 1]}
    assert width_to_ffn_mult(14336, 4096) == 5.25  # Llama-3.1-8B's MLP
    assert width_to_ffn_mult(1536, 576) == 4.0 and width_to_ffn_mult(1504, 576) is None
    ok, heads, _ = block_configs([{"attention": dense, "mlp": {"channels": 256}}, {"attention": None, "mlp": None}], 64)
    assert ok is not None and heads == 4
    fewer = {"heads": 2, "kv_heads": 1, "kv_index": [0, 0]}
    assert block_configs([{"attention": dense, "mlp": None}, {"attention": fewer, "mlp": None}], 64)[0] is None
    uneven = {"heads": 3, "kv_heads": 2, "kv_index": [0, 1, 1]}
    assert "evenly grouped" in block_configs([{"attention": uneven, "mlp": None}], 64)[2]
    assert "not expressible" in block_configs([{"attention": dense, "mlp": {"channels": 96}}], 64)[2]


def test_first_non_empty_layer_without_attention_is_not_servable():
    from sparsearch.supernet.nemotron_nas import block_configs

    attn = {"heads": 4, "kv_heads": 2, "kv_index": [0, 0, 1, 1]}
    mlp_only = [{"attention": None, "mlp": {"channels": 256}}, {"attention": attn, "mlp": None}]
    blocks, _, why = block_configs(mlp_only, 64)
    assert blocks is None and "first non-empty layer" in why  # vLLM's DeciLM crashes on it
    empty_first = [{"attention": None, "mlp": None}, {"attention": attn, "mlp": {"channels": 256}}]
    assert block_configs(empty_first, 64)[0] is not None


def test_block_configs_read_as_attributes_and_stay_json():
    import json

    from sparsearch.supernet.modeling_sparsearch import SparsearchConfig

    blocks = [{"attention": {"no_op": True, "n_heads_in_group": None}, "ffn": {"no_op": False, "ffn_mult": 6.0}}]
    cfg = SparsearchConfig(block_configs=blocks, layer_configs=[])
    assert cfg.block_configs[0].attention.no_op is True and cfg.block_configs[0].ffn.ffn_mult == 6.0
    assert json.loads(cfg.to_json_string())["block_configs"] == blocks


def test_cached_decoding_and_self_generation_use_no_deprecated_cache_name(candidate):
    """transformers 5.24 renamed the KV cache of model outputs to ``cache`` and logs that
    ``past_key_values`` is deprecated; the exported model and self-generated calibration use the
    installed release's name, so neither logs it."""
    from tests.helpers.tiny import tiny_tokenizer
    from sparsearch.fitness.data import sample_from_model

    _, _, _, loaded, _, tokens = candidate
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # logged once per process: earlier tests may have logged it
    try:
        loaded.generate(tokens[:1, :6], attention_mask=torch.ones(1, 6, dtype=torch.long), max_new_tokens=3,
                        do_sample=False, pad_token_id=0)
        sample_from_model(loaded, tiny_tokenizer(vocab_size=128), samples=1, seqlen=6, seed=0)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [r.getMessage() for r in records if "deprecated" in r.getMessage()]
