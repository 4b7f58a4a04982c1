import copy
import hashlib
import json

import pytest
import torch

from tests.helpers.tiny import ARCHS, tiny_model
from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Unit
from sparsearch.supernet import Stitcher, SupernetConfig, SupernetStore, build_supernet
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.modules import PrunedAttention, PrunedMLP, cache_keyword
from sparsearch.supernet.store import MANIFEST

CFG = SupernetConfig(batch_size=4, mlp_alignment=8, store_dtype="float32")


def _build(model, tokens, path, cfg=CFG, **kw):
    return build_supernet(model, tokens, str(path), cfg, progress=False, **kw)


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


@pytest.fixture(scope="module", params=ARCHS)
def built(request, tmp_path_factory):
    torch.manual_seed(0)
    tokens = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(0))
    model = tiny_model(request.param, layers=3)
    dense = copy.deepcopy(model)
    store = _build(model, tokens, tmp_path_factory.mktemp(request.param) / "sn")
    return request.param, dense, store, tokens


def _hetero_genome(space):
    """A genome with dense, pruned and removed units of both kinds."""
    g = []
    for i, lv in enumerate(space.levels):
        g.append([0, len(lv) // 2, len(lv) - 1, 1, 2, len(lv) - 2][i % 6])
    return tuple(g)


def test_build_leaves_model_unchanged_and_covers_every_unit(built):
    arch, dense, store, tokens = built
    space = store.space()
    assert [u.name for u in space.units] == [f"L{i:03d}.{k}" for i in range(3) for k in ("attn", "mlp")]
    assert all(len(lv) == 9 for lv in space.levels)
    assert store.manifest["complete"] and store.manifest["model"]["architecture"] == arch


def test_stitch_dense_genome_reproduces_dense_logits(built):
    _, dense, store, tokens = built
    model = copy.deepcopy(dense)
    Stitcher(model, store).apply(store.space().dense)
    torch.testing.assert_close(_logits(model, tokens), _logits(dense, tokens), rtol=0, atol=0)


def test_apply_a_then_b_equals_b_on_fresh_model(built):
    _, dense, store, tokens = built
    space = store.space()
    a, b = space.uniform(0.5), _hetero_genome(space)
    m1 = copy.deepcopy(dense)
    s1 = Stitcher(m1, store)
    s1.apply(a)
    swapped = s1.apply(b)
    assert swapped == sum(x != y for x, y in zip(a, b))
    m2 = copy.deepcopy(dense)
    Stitcher(m2, store).apply(b)
    torch.testing.assert_close(_logits(m1, tokens), _logits(m2, tokens), rtol=1e-5, atol=1e-5)
    # and back to dense
    s1.apply(space.dense)
    torch.testing.assert_close(_logits(m1, tokens), _logits(dense, tokens), rtol=0, atol=0)


@pytest.mark.parametrize("removed", ["first", "last", "first-layer"])
def test_cached_decoding_equals_full_forward_with_attention_removed(built, removed):
    """Greedy decoding with a KV cache gives the logits of a full forward at every step, also when
    the first (or last) layer's attention is removed."""
    _, dense, store, tokens = built
    space = store.space()
    genome = list(space.uniform(0.25))
    last = {"attn": len(space.levels[0]) - 1, "mlp": len(space.levels[1]) - 1}
    if removed == "first":
        genome[0] = last["attn"]
    elif removed == "last":
        genome[-2] = last["attn"]
    else:  # the whole first layer
        genome[0], genome[1] = last["attn"], last["mlp"]
    model = copy.deepcopy(dense)
    Stitcher(model, store).apply(tuple(genome))
    assert model.model.layers[0 if removed != "last" else 2].self_attn is None
    prompt = tokens[:2, :5]
    with torch.no_grad():
        # as a decoding loop calls the model: new tokens and the cache, positions from the cache
        seq, past, step_in, steps = prompt, None, prompt, []
        for _ in range(8):
            res = model(input_ids=step_in, use_cache=True, **({} if past is None else {cache_keyword(model): past}))
            past, logits = res.past_key_values, res.logits[:, -1]
            steps.append(logits)
            step_in = logits.argmax(-1, keepdim=True)
            seq = torch.cat([seq, step_in], 1)
        full = model(input_ids=seq, use_cache=False).logits
        torch.testing.assert_close(torch.stack(steps, 1), full[:, prompt.shape[1] - 1 : -1], rtol=1e-4, atol=1e-4)
        out = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(out, seq)


def test_stitched_model_has_real_smaller_tensors(built):
    _, dense, store, _ = built
    space = store.space()
    g = _hetero_genome(space)
    model = copy.deepcopy(dense)
    Stitcher(model, store).apply(g)
    removed = space.dense_params - space.params(g)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_now = sum(p.numel() for p in model.parameters())
    # o_proj/down_proj biases and Qwen3 q/k norms are not prunable parameters
    assert n_dense - n_now == pytest.approx(removed, abs=200)
    assert n_now < n_dense
    for unit, level in zip(space.units, g):
        layer = model.model.layers[unit.layer]
        block = layer.self_attn if unit.kind == "attn" else layer.mlp
        params = space.levels[space.units.index(unit)][level].params
        if params == 0:
            assert block is None
        elif level > 0 and params < space.levels[space.units.index(unit)][0].params:
            assert isinstance(block, PrunedAttention if unit.kind == "attn" else PrunedMLP)


def test_pruned_modules_equal_masked_dense_blocks(built):
    """A pruned block with real small tensors equals the dense block with the dropped output-projection
    columns zeroed and the kept ones replaced by the refit weights."""
    _, dense, store, tokens = built
    adapter = DecoderAdapter(dense)
    x = torch.randn(2, 10, dense.config.hidden_size, generator=torch.Generator().manual_seed(3))
    pos = torch.arange(10).unsqueeze(0)
    pe = dense.model.rotary_emb(x, pos)
    for level in range(1, 8):
        t = store.read(Unit(1, "attn"), level)
        if t is None:
            continue
        attn = adapter.attention(1)
        masked = copy.deepcopy(attn)
        hd = attn.head_dim
        cols = (t["kept_heads"].unsqueeze(1) * hd + torch.arange(hd)).flatten()
        with torch.no_grad():
            masked.o_proj.weight.zero_()
            masked.o_proj.weight[:, cols] = t["o_proj.weight"]
            ref = masked(hidden_states=x, position_embeddings=pe, attention_mask=None)[0]
            out = PrunedAttention(t, attn, adapter.rotary_fn(attn))(x, pe, None)[0]
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        t = store.read(Unit(1, "mlp"), level)
        mlp = adapter.mlp(1)
        masked = copy.deepcopy(mlp)
        with torch.no_grad():
            masked.down_proj.weight.zero_()
            masked.down_proj.weight[:, t["kept_channels"]] = t["down_proj.weight"]
            torch.testing.assert_close(PrunedMLP(t, mlp)(x), masked(x), rtol=1e-5, atol=1e-5)


def test_store_files_hold_only_what_differs_from_dense(built):
    """A variant file holds the kept indices (int32) and the refit output projection, nothing that
    is a slice of the dense weights; the manifest's exact parameter count follows from the indices."""
    from sparsearch.supernet.variants import attention_params, mlp_params

    _, dense, store, _ = built
    cfg = dense.config
    hd = cfg.head_dim
    bias = dense.model.layers[0].self_attn.q_proj.bias is not None
    tensor_bytes, files = 0, 0
    for name, unit in store.manifest["units"].items():
        for i, entry in enumerate(unit["levels"]):
            t = store.read(Unit.parse(name), i)
            if entry["file"] is None:
                assert entry["params"] in (0, unit["levels"][0]["params"])
                continue
            files += 1
            tensor_bytes += sum(v.numel() * v.element_size() for v in t.values())
            if name.endswith("attn"):
                assert set(t) == {"kept_heads", "kept_kv_heads", "o_proj.weight"}
                heads, groups = t["kept_heads"], t["kept_kv_heads"]
                assert heads.dtype == groups.dtype == torch.int32
                assert (len(heads), len(groups)) == (entry["kept"]["heads"], entry["kept"]["kv_heads"])
                assert entry["params"] == attention_params(len(heads), len(groups), cfg.hidden_size, hd, bias)
                assert t["o_proj.weight"].shape == (cfg.hidden_size, len(heads) * hd)
            else:
                assert set(t) == {"kept_channels", "down_proj.weight"}
                assert len(t["kept_channels"]) == entry["kept"]["channels"]
                assert entry["params"] == mlp_params(entry["kept"]["channels"], cfg.hidden_size, False)
                assert t["down_proj.weight"].shape == (cfg.hidden_size, entry["kept"]["channels"])
            data = (store.path / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert files > 0
    # safetensors adds one small JSON header per file, nothing else
    assert tensor_bytes <= store.size_bytes <= tensor_bytes + 1024 * files


def test_build_is_streaming_layer_by_layer_and_deterministic(tmp_path, tokens):
    model = tiny_model("llama")
    s1 = _build(model, tokens, tmp_path / "a")
    s2 = _build(model, tokens, tmp_path / "b")
    sha = lambda s: [e.get("sha256") for u in s.manifest["units"].values() for e in u["levels"]]
    assert sha(s1) == sha(s2)


def test_error_accumulation_changes_inputs_and_disabling_reproduces_dense(tmp_path, tokens):
    model = tiny_model("llama", layers=3)
    with torch.no_grad():
        hs = model(input_ids=tokens, output_hidden_states=True, use_cache=False).hidden_states
    dense_inputs = [torch.cat([h for h in hs[i].split(4)]) for i in range(3)]
    on, off = [], []
    _build(model, tokens, tmp_path / "on", record_inputs=on)
    _build(model, tokens, tmp_path / "off", SupernetConfig(**{**CFG.__dict__, "error_accumulation": False}), record_inputs=off)
    for i in range(3):
        torch.testing.assert_close(torch.cat(off[i]), dense_inputs[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(on[0]), dense_inputs[0])
    for i in (1, 2):
        diff = (torch.cat(on[i]) - dense_inputs[i]).norm() / dense_inputs[i].norm()
        assert diff > 0.01, f"layer {i}: accumulated inputs equal dense ones (rel diff {diff:.2e})"
    # the variants of later layers differ too: they were pruned on other inputs
    a = SupernetStore.open(tmp_path / "on").read(Unit(2, "mlp"), 4)["down_proj.weight"]
    b = SupernetStore.open(tmp_path / "off").read(Unit(2, "mlp"), 4)["down_proj.weight"]
    assert not torch.equal(a, b)


def test_killed_build_resumes_and_matches_uninterrupted(tmp_path, tokens, monkeypatch):
    model = tiny_model("qwen2", layers=3)
    full = _build(model, tokens, tmp_path / "full")
    written = []
    original = SupernetStore.write_unit

    def dying(self, unit, variants):
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        written.append(unit.name)
        return original(self, unit, variants)

    monkeypatch.setattr(SupernetStore, "write_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        _build(model, tokens, tmp_path / "part")
    part = json.loads((tmp_path / "part" / MANIFEST).read_text())
    assert not part["complete"] and len(part["units"]) == 3
    with pytest.raises(SparsearchError, match="unfinished"):
        SupernetStore.open(tmp_path / "part")
    resumed_units = []
    monkeypatch.setattr(SupernetStore, "write_unit",
                        lambda self, u, v: (resumed_units.append(u.name), original(self, u, v)))
    store = _build(model, tokens, tmp_path / "part")
    assert resumed_units == ["L001.mlp", "L002.attn", "L002.mlp"]
    assert store.manifest["units"] == full.manifest["units"]


def test_resume_refuses_other_config(tmp_path, tokens):
    model = tiny_model("llama")
    _build(model, tokens, tmp_path / "sn")
    with pytest.raises(SparsearchError, match="different config"):
        _build(model, tokens, tmp_path / "sn", SupernetConfig(batch_size=4, mlp_alignment=16, store_dtype="float32"))
    with pytest.raises(SparsearchError, match="different calibration"):
        _build(model, tokens[:4], tmp_path / "sn")


def test_corrupt_or_foreign_supernet_is_refused(tmp_path, tokens):
    model = tiny_model("mistral")
    store = _build(model, tokens, tmp_path / "sn")
    other = tiny_model("mistral", seed=1)
    with pytest.raises(SparsearchError, match="built for another model"):
        Stitcher(other, SupernetStore.open(tmp_path / "sn"))
    entry = next(e for e in store.levels(Unit(0, "mlp")) if e["file"])
    f = tmp_path / "sn" / entry["file"]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    fresh = SupernetStore.open(tmp_path / "sn")
    with pytest.raises(SparsearchError, match="SHA-256"):
        fresh.verify()
    (tmp_path / "sn" / MANIFEST).write_text("{not json")
    with pytest.raises(SparsearchError, match="corrupt supernet manifest"):
        SupernetStore.open(tmp_path / "sn")
    with pytest.raises(SparsearchError, match="no supernet"):
        SupernetStore.open(tmp_path / "nothing")


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(SparsearchError, match="unsupported architecture gpt2; supported: llama, mistral, qwen2, qwen3"):
        DecoderAdapter(model)


def test_balanced_heads_keep_equal_heads_per_group(tmp_path, tokens):
    model = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2, head_dim=4)
    cfg = SupernetConfig(batch_size=4, mlp_alignment=8, store_dtype="float32", balanced_heads=True)
    store = _build(model, tokens, tmp_path / "sn", cfg)
    for i, entry in enumerate(store.levels(Unit(0, "attn"))):
        t = store.read(Unit(0, "attn"), i)
        if t is not None:
            groups = t["kept_heads"].long() // 4  # 4 query heads per KV group
            assert sorted(set(groups.tolist())) == t["kept_kv_heads"].tolist()
            counts = torch.bincount(groups)[t["kept_kv_heads"].long()]
            assert len(set(counts.tolist())) == 1, counts


def test_magnitude_criterion_builds_and_differs_from_obs(tmp_path, tokens):
    model = tiny_model("llama")
    a = _build(model, tokens, tmp_path / "obs")
    b = _build(model, tokens, tmp_path / "mag", SupernetConfig(**{**CFG.__dict__, "criterion": "magnitude"}))
    ka = [a.read(Unit(l, "mlp"), 6)["kept_channels"] for l in range(2)]
    kb = [b.read(Unit(l, "mlp"), 6)["kept_channels"] for l in range(2)]
    assert any(not torch.equal(x, y) for x, y in zip(ka, kb))


def test_a_supernet_in_the_old_format_is_refused_with_a_rebuild_hint(tmp_path, tokens):
    store = _build(tiny_model("llama"), tokens, tmp_path / "sn")
    manifest = json.loads((store.path / MANIFEST).read_text())
    manifest["format"] = "sparsearch-supernet/1"
    (store.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SparsearchError, match="older format sparsearch-supernet/1; rebuild it"):
        SupernetStore.open(store.path)


def test_without_refit_a_variant_is_its_kept_indices(tmp_path, tokens):
    model = tiny_model("qwen2")  # q/k/v biases: sliced from the dense block too
    store = _build(model, tokens, tmp_path / "sn", SupernetConfig(batch_size=4, mlp_alignment=8, refit=False))
    x = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    adapter = DecoderAdapter(model)
    for level in range(1, 8):
        t = store.read(Unit(0, "mlp"), level)
        assert set(t) == {"kept_channels"}
        mlp = adapter.mlp(0)
        masked = copy.deepcopy(mlp)
        with torch.no_grad():
            keep = torch.zeros(mlp.down_proj.in_features, dtype=torch.bool)
            keep[t["kept_channels"].long()] = True
            masked.down_proj.weight[:, ~keep] = 0
            torch.testing.assert_close(PrunedMLP(t, mlp)(x), masked(x), rtol=1e-5, atol=1e-5)
        if store.read(Unit(0, "attn"), level) is not None:
            assert set(store.read(Unit(0, "attn"), level)) == {"kept_heads", "kept_kv_heads"}


def test_later_supernets_hard_link_identical_variants(tmp_path, tokens):
    """Týr's rounds rebuild ladders around the last round's levels; variants whose bytes equal an
    earlier supernet's (without error accumulation: every level both ladders share) are hard links."""
    model = tiny_model("llama")
    cfg = SupernetConfig(batch_size=4, mlp_alignment=8, error_accumulation=False)
    first = _build(model, tokens, tmp_path / "r0", cfg)
    ladders = {u.name: "0,0.375,0.4375,0.5,1" for u in first.space().units}
    second = _build(model, tokens, tmp_path / "r1", SupernetConfig(**{**cfg.__dict__, "unit_ladders": ladders}),
                    share=[str(first.path)])
    linked = [(name, e) for name, u in second.manifest["units"].items() for e in u["levels"] if e.get("linked")]
    assert linked and second.new_bytes < second.size_bytes
    inodes = {}
    for store in (first, second):
        for u in store.manifest["units"].values():
            for e in u["levels"]:
                if e["file"]:
                    inodes.setdefault(e["sha256"], set()).add((store.path / e["file"]).stat().st_ino)
    assert all(len(i) == 1 for i in inodes.values())  # one file on disk per distinct content
    second.verify()
    assert any(e["sparsity"] in (0.375, 0.5) for _, e in linked)  # levels the first ladder has
