"""Remote code for models exported by sparsearch (copied next to their weights).

A Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) whose every layer has its own shape: an
attention block with its own query heads and KV heads (each query head's KV head given by
``kv_index`` in the config), or none; an MLP with its own channel count, or none. Removed blocks are skipped.
Load with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``; ``generate()``
works with a KV cache (cache slots are given to attention layers only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb


class BlockConfig(dict):
    """A ``block_configs`` entry of the ``nemotron-nas`` schema: a dict (the config stays plain
    JSON) whose keys are also attributes, as vLLM's DeciLM reads them (``block.attention.no_op``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            if isinstance(value, dict) and not isinstance(value, BlockConfig):
                self[key] = BlockConfig(value)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class SparsearchConfig(LlamaConfig):
    """``layer_configs[i]`` = ``{"attention": {"heads", "kv_heads", "kv_index"} | None,
    "mlp": {"channels"} | None}``; ``qkv_bias`` / ``o_bias``: biases of q/k/v and of o;
    ``qk_norm``: per-head RMSNorm of queries and keys (Qwen3); ``sliding_window``: Mistral.
    ``block_configs``: the same layers in the ``nemotron-nas`` schema, when they fit it (vLLM)."""

    model_type = "sparsearch"
    layer_configs: list | None = None
    block_configs: list | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    base_model_type: str = "llama"

    def __post_init__(self, **kwargs):
        if self.block_configs is not None:
            self.block_configs = [BlockConfig(b) for b in self.block_configs]
        super().__post_init__(**kwargs)


class SparsearchNemotronNASConfig(SparsearchConfig):
    """The config class of an export that also has the ``nemotron-nas`` schema (vLLM's DeciLM):
    the same fields, under the model type its ``config.json`` names, so that loading it does not
    warn about a model-type mismatch."""

    model_type = "nemotron-nas"


class SparsearchAttention(nn.Module):
    def __init__(self, config: SparsearchConfig, spec: dict, cache_index: int):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.head_dim, self.scaling, self.cache_index = hd, hd**-0.5, cache_index
        self.q_proj = nn.Linear(d, spec["heads"] * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, spec["kv_heads"] * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, spec["kv_heads"] * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(spec["heads"] * hd, d, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = LlamaRMSNorm(hd, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(hd, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # which KV head each query head reads: from the config, not a tensor in the weights
        # (vLLM's weight loader accepts only parameters it knows)
        self.kv_index = tuple(spec["kv_index"])
        self._kv_index: torch.Tensor | None = None

    def _kv_index_on(self, device: torch.device) -> torch.Tensor:
        if self._kv_index is None or self._kv_index.device != device:
            self._kv_index = torch.tensor(self.kv_index, dtype=torch.long, device=device)
        return self._kv_index

    def forward(self, x, position_embeddings, mask, past_key_values=None):
        b, t, _ = x.shape
        shape = (b, t, -1, self.head_dim)
        q, k = self.q_proj(x).view(shape), self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.cache_index)
        index = self._kv_index_on(k.device)
        k, v = k.index_select(1, index), v.index_select(1, index)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, scale=self.scaling)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SparsearchMLP(nn.Module):
    def __init__(self, config: SparsearchConfig, spec: dict):
        super().__init__()
        d, c = config.hidden_size, spec["channels"]
        self.gate_proj = nn.Linear(d, c, bias=config.mlp_bias)
        self.up_proj = nn.Linear(d, c, bias=config.mlp_bias)
        self.down_proj = nn.Linear(c, d, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SparsearchDecoderLayer(nn.Module):
    def __init__(self, config: SparsearchConfig, spec: dict, cache_index: int):
        super().__init__()
        self.self_attn = self.mlp = None
        if spec.get("attention"):
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = SparsearchAttention(config, spec["attention"], cache_index)
        if spec.get("mlp"):
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = SparsearchMLP(config, spec["mlp"])

    def forward(self, h, position_embeddings, mask, past_key_values=None):
        if self.self_attn is not None:
            h = h + self.self_attn(self.input_layernorm(h), position_embeddings, mask, past_key_values)
        if self.mlp is not None:
            h = h + self.mlp(self.post_attention_layernorm(h))
        return h


class SparsearchPreTrainedModel(PreTrainedModel):
    config_class = SparsearchConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _no_split_modules = ["SparsearchDecoderLayer"]


def _mask(attention_mask, positions, k_len: int, window: int | None, t: int):
    """A boolean mask (True = attend) for queries at cache ``positions`` over ``k_len`` keys, or
    ``None`` when plain causal attention is exact."""
    padded = attention_mask is not None and not bool(attention_mask[:, :k_len].all())
    windowed = window is not None and k_len > window
    if not padded and not windowed and (t == k_len or t == 1):
        return None
    k_pos = torch.arange(k_len, device=positions.device)
    allowed = k_pos[None, :] <= positions[:, None]
    if windowed:
        allowed &= k_pos[None, :] > positions[:, None] - window
    mask = allowed[None, None].expand(attention_mask.shape[0] if attention_mask is not None else 1, 1, t, k_len)
    if padded:
        mask = mask & attention_mask[:, None, None, :k_len].bool()
        mask = mask | (k_pos[None, :] == positions[:, None])[None, None]  # a padded row attends to itself
    return mask


class SparsearchModel(SparsearchPreTrainedModel):
    def __init__(self, config: SparsearchConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        layers, slot = [], 0
        for spec in config.layer_configs:
            layers.append(SparsearchDecoderLayer(config, spec, slot))
            slot += 1 if spec.get("attention") else 0
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, **kwargs):
        # transformers >= 5.24 passes the KV cache as ``cache``, earlier releases as ``past_key_values``
        past_key_values = cache if cache is not None else past_key_values
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        t = h.shape[1]
        slots = torch.arange(past, past + t, device=h.device)  # cache positions of the new tokens
        if position_ids is None:
            position_ids = slots.unsqueeze(0)
        pe = self.rotary_emb(h, position_ids)
        mask = _mask(attention_mask, slots, past + t, self.config.sliding_window, t)
        for layer in self.layers:
            h = layer(h, pe, mask, past_key_values)
        # positional: the cache field is ``cache`` from transformers 5.24 on, ``past_key_values`` before
        # (naming the old one makes 5.24 warn that it is deprecated)
        return BaseModelOutputWithPast(self.norm(h), past_key_values)


class SparsearchForCausalLM(SparsearchPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SparsearchConfig):
        super().__init__(config)
        self.model = SparsearchModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, cache=None, **kwargs):
        past_key_values = cache if cache is not None else past_key_values
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss, logits, past_key_values)  # positional, as in SparsearchModel


class SparsearchNemotronNASForCausalLM(SparsearchForCausalLM):
    """:class:`SparsearchForCausalLM` under the ``nemotron-nas`` config class (see
    :class:`SparsearchNemotronNASConfig`)."""

    config_class = SparsearchNemotronNASConfig
