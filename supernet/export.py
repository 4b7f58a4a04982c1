"""Export a stitched candidate as a physically smaller model that loads with transformers.

The folder holds ``config.json`` (``model_type: sparsearch`` with per-layer ``layer_configs``),
safetensors weights of per-layer shapes (removed blocks have none), the tokenizer, the generation
config, ``modeling_sparsearch.py`` (remote code for the installed transformers 5.x) and a model
card. ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` reproduces the
candidate's logits. When the shapes fit the ``nemotron-nas`` rules (:mod:`supernet.nemotron_nas`),
the config also uses that schema so that vLLM's DeciLM model can serve the folder. The folder is
written to a temporary name (``.NAME.PID.*`` beside it) and renamed when complete; the next export
to the same folder removes a temporary that a killed process left.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsearch.base.atomic import make_shared
from sparsearch.base.errors import SparsearchError
from sparsearch.supernet import modeling_sparsearch, nemotron_nas
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.modules import StitchedLayer

AUTO_MAP = {
    "AutoConfig": "modeling_sparsearch.SparsearchConfig",
    "AutoModelForCausalLM": "modeling_sparsearch.SparsearchForCausalLM",
}

NEMOTRON_AUTO_MAP = {  # the same model under the config class of the nemotron-nas model type
    "AutoConfig": "modeling_sparsearch.SparsearchNemotronNASConfig",
    "AutoModelForCausalLM": "modeling_sparsearch.SparsearchNemotronNASForCausalLM",
}


def _attention_spec(attn: nn.Module, shape) -> dict[str, Any]:
    if hasattr(attn, "kv_index"):
        kv_index = attn.kv_index.tolist()
    else:  # the model's own dense attention
        kv_index = [h // shape.heads_per_group for h in range(shape.num_heads)]
    return {"heads": len(kv_index), "kv_heads": attn.k_proj.out_features // shape.head_dim, "kv_index": kv_index}


def layer_configs(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer, the exported shapes of a (stitched or dense) model."""
    adapter = DecoderAdapter(model)
    out = []
    for layer in adapter.layers:
        attn, mlp = layer.self_attn, layer.mlp
        out.append({
            "attention": None if attn is None else _attention_spec(attn, adapter.shape),
            "mlp": None if mlp is None else {"channels": mlp.gate_proj.out_features},
        })
    return out


def export_config(model: nn.Module) -> modeling_sparsearch.SparsearchConfig:
    base = model.config
    adapter = DecoderAdapter(model)
    attn0 = next((l.dense_blocks["attn"] if isinstance(l, StitchedLayer) else l.self_attn) for l in adapter.layers)
    mlp0 = next((l.dense_blocks["mlp"] if isinstance(l, StitchedLayer) else l.mlp) for l in adapter.layers)
    window = getattr(base, "sliding_window", None) if adapter.model_type == "mistral" else None
    if adapter.model_type in ("qwen2", "qwen3") and getattr(base, "use_sliding_window", False):
        raise SparsearchError(f"{adapter.model_type} with use_sliding_window is not supported by the export")
    return modeling_sparsearch.SparsearchConfig(
        vocab_size=base.vocab_size, hidden_size=base.hidden_size, intermediate_size=base.intermediate_size,
        num_hidden_layers=base.num_hidden_layers, num_attention_heads=base.num_attention_heads,
        num_key_value_heads=adapter.shape.num_kv_heads, head_dim=adapter.shape.head_dim,
        hidden_act=base.hidden_act, max_position_embeddings=base.max_position_embeddings,
        rms_norm_eps=base.rms_norm_eps, rope_parameters=dict(base.rope_parameters),
        tie_word_embeddings=bool(getattr(base, "tie_word_embeddings", False)),
        bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
        qkv_bias=attn0.q_proj.bias is not None, o_bias=attn0.o_proj.bias is not None,
        mlp_bias=mlp0.gate_proj.bias is not None, qk_norm=getattr(attn0, "q_norm", None) is not None,
        sliding_window=window, base_model_type=adapter.model_type,
        layer_configs=layer_configs(model), architectures=["SparsearchForCausalLM"], auto_map=AUTO_MAP,
    )


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the exported model, named as :mod:`modeling_sparsearch` names them."""
    unused = set()  # the norms in front of removed blocks
    for i, layer in enumerate(DecoderAdapter(model).layers):
        if layer.self_attn is None:
            unused.add(f"model.layers.{i}.input_layernorm.weight")
        if layer.mlp is None:
            unused.add(f"model.layers.{i}.post_attention_layernorm.weight")
    state = {}
    for name, t in model.state_dict().items():  # kv_index is config (layer_configs), not weights
        if "rotary_emb" in name or name in unused or name.endswith(".kv_index"):
            continue
        state[name] = t
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def export_model(model: nn.Module, dtype: torch.dtype | None = None) -> modeling_sparsearch.SparsearchForCausalLM:
    """The (stitched) ``model`` as a :class:`SparsearchForCausalLM` of its real smaller shapes; its
    weights are the stitched model's tensors (not copies; cast to ``dtype`` when given)."""
    cfg = export_config(model)
    with torch.device("meta"):
        exported = modeling_sparsearch.SparsearchForCausalLM(cfg)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in export_state_dict(model).items()}
    missing, unexpected = exported.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SparsearchError(f"export weights do not match the exported shapes: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_word_embeddings:
        exported.tie_weights()
    exported.model.rotary_emb = modeling_sparsearch.LlamaRotaryEmbedding(cfg).to(next(model.parameters()).device)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        exported.generation_config = copy.deepcopy(gen)
    return exported


def export(model: nn.Module, tokenizer, out: str | Path, *, card: str | None = None,
           dtype: torch.dtype | None = None) -> Path:
    """Write the (stitched) ``model`` to ``out``; returns the folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SparsearchError(f"export folder {out} exists and is not empty")
    return save_export(export_model(model, dtype), tokenizer, out, card=card)


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove the temporary folders of exports to ``out`` that a killed process left half-written
    (``.NAME.PID.*`` beside it, whose process is gone); returns them. A live export's is kept."""
    out = Path(out)
    removed = []
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*"):
        parts = tmp.name[len(out.name) + 2 :].split(".")
        pid = int(parts[0]) if parts[0].isdigit() else None
        if not tmp.is_dir() or tmp.is_symlink() or (pid is not None and _alive(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def save_export(exported: modeling_sparsearch.SparsearchForCausalLM, tokenizer, out: str | Path, *,
                card: str | None = None) -> Path:
    """Write an exported model (from :func:`export_model`, possibly trained since) to the new or
    empty folder ``out``, atomically; returns the folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SparsearchError(f"export folder {out} exists and is not empty")
    cfg = exported.config
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}."))
    except OSError as e:
        raise SparsearchError(f"cannot write the export {out}: {e.strerror or e}") from None
    try:
        exported.save_pretrained(tmp)
        cfg_json = json.loads((tmp / "config.json").read_text())
        cfg_json["auto_map"] = AUTO_MAP
        blocks, heads, _why = nemotron_nas.block_configs(cfg.layer_configs, cfg.hidden_size)
        if blocks is not None:  # also servable by vLLM's DeciLM model
            cfg_json.update(model_type="nemotron-nas", architectures=["DeciLMForCausalLM"], block_configs=blocks,
                            num_attention_heads=heads or cfg.num_attention_heads,
                            auto_map=NEMOTRON_AUTO_MAP)
        (tmp / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
        shutil.copyfile(modeling_sparsearch.__file__, tmp / "modeling_sparsearch.py")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if getattr(exported, "generation_config", None) is not None:
            exported.generation_config.save_pretrained(tmp)
        if card:
            (tmp / "README.md").write_text(card)
        if out.exists():
            out.rmdir()
        make_shared(tmp)
        tmp.rename(out)
    except OSError as e:  # a full disk, a read-only folder: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise SparsearchError(f"cannot write the export {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
