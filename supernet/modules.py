"""Modules with real, smaller tensors for pruned blocks, and the decoder layer that hosts them.

A variant is a dict of tensors as stored in the supernet (see :mod:`sparsearch.supernet.variants`):
attention ``kept_heads [hq]`` and ``kept_kv_heads [hk]`` (indices into the dense block's query
heads and KV heads) and the refit ``o_proj.weight [d, hq*hd]``; MLP ``kept_channels [c]`` and the
refit ``down_proj.weight [d, c]``. The kept rows of q/k/v and gate/up (and biases) are sliced
from the dense block here; without a stored output projection (no refit) its kept columns are too.
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def _cache(past_key_values, kwargs: dict):
    """The KV cache a block was given: ``cache=`` (transformers >= 5.24) or ``past_key_values=``."""
    cache = kwargs.pop("cache", None)
    return cache if cache is not None else past_key_values


def cache_keyword(block: nn.Module) -> str:
    """The keyword under which ``block.forward`` takes the KV cache in the installed transformers."""
    return "cache" if "cache" in inspect.signature(block.forward).parameters else "past_key_values"


def output_cache(output) -> object:
    """The KV cache of a model output: its field ``cache`` (transformers >= 5.24, which warns that
    ``past_key_values`` is deprecated) or ``past_key_values`` (earlier releases)."""
    return output["cache"] if "cache" in output else output.past_key_values


def _linear(weight: Tensor, bias: Tensor | None, like: nn.Linear) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    dtype, device = like.weight.dtype, like.weight.device
    lin.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
    return lin


def _rows(linear: nn.Linear, rows: Tensor) -> nn.Linear:
    """``linear`` restricted to its output ``rows`` (a copy)."""
    bias = None if linear.bias is None else linear.bias.detach().index_select(0, rows)
    return _linear(linear.weight.detach().index_select(0, rows), bias, linear)


def _columns(linear: nn.Linear, cols: Tensor, stored: Tensor | None) -> nn.Linear:
    """``linear`` restricted to its input ``cols``: the stored (refit) weight, or a slice; bias kept."""
    weight = stored if stored is not None else linear.weight.detach().index_select(1, cols)
    return _linear(weight, None if linear.bias is None else linear.bias.detach(), linear)


def _channels(heads: Tensor, head_dim: int) -> Tensor:
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


class PrunedAttention(nn.Module):
    """Grouped-query attention over a subset of query heads and KV groups of ``source``.

    Kept query heads may be unevenly spread over kept groups; ``kv_index`` maps each query head to
    its key/value head. Rotary embedding and Qwen3's q/k norms are the source module's own.
    """

    def __init__(self, tensors: Mapping[str, Tensor], source: nn.Module, rotary_fn: Callable):
        super().__init__()
        device = source.q_proj.weight.device
        self.head_dim = source.head_dim
        self.scaling = source.scaling
        self.layer_idx = getattr(source, "layer_idx", None)
        heads = tensors["kept_heads"].to(device=device, dtype=torch.long)
        groups = tensors["kept_kv_heads"].to(device=device, dtype=torch.long)
        per_group = source.q_proj.out_features // source.k_proj.out_features  # query heads per KV head
        q_rows, kv_rows = _channels(heads, self.head_dim), _channels(groups, self.head_dim)
        self.q_proj = _rows(source.q_proj, q_rows)
        self.k_proj = _rows(source.k_proj, kv_rows)
        self.v_proj = _rows(source.v_proj, kv_rows)
        self.o_proj = _columns(source.o_proj, q_rows, tensors.get("o_proj.weight"))
        self.q_norm = getattr(source, "q_norm", None)
        self.k_norm = getattr(source, "k_norm", None)
        self.register_buffer("kv_index", torch.searchsorted(groups, heads // per_group))
        self._rotary = rotary_fn

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        bsz, q_len, _ = hidden_states.shape
        shape = (bsz, q_len, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape)
        k = self.k_proj(hidden_states).view(shape)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = position_embeddings
        q, k = self._rotary(q, k, cos, sin)
        past_key_values = _cache(past_key_values, kwargs)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        k = k.index_select(1, self.kv_index)
        v = v.index_select(1, self.kv_index)
        if attention_mask is not None:
            mask = attention_mask[:, :, :, : k.shape[-2]]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=q_len > 1, scale=self.scaling)
        out = out.transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(out), None


class PrunedMLP(nn.Module):
    """Gated MLP over a subset of the intermediate channels of ``source``."""

    def __init__(self, tensors: Mapping[str, Tensor], source: nn.Module):
        super().__init__()
        rows = tensors["kept_channels"].to(device=source.gate_proj.weight.device, dtype=torch.long)
        self.gate_proj = _rows(source.gate_proj, rows)
        self.up_proj = _rows(source.up_proj, rows)
        self.down_proj = _columns(source.down_proj, rows, tensors.get("down_proj.weight"))
        self.act_fn = source.act_fn

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class StitchedLayer(nn.Module):
    """A decoder layer whose attention and MLP slots hold dense, pruned or no (``None``) blocks.

    Same call signature and arithmetic as the Llama-family decoder layer; a removed block is
    skipped entirely (no norm, no matmul, no residual add). With a KV cache, a removed attention
    block still advances its cache layer by the new tokens (with one-element stand-ins for keys and
    values): the model reads the cache's length from its first layer to place new tokens, so a
    stitched model whose first attention is removed would otherwise restart positions.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.input_layernorm = layer.input_layernorm
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.self_attn: nn.Module | None = layer.self_attn
        self.mlp: nn.Module | None = layer.mlp
        # the original blocks, outside the module tree (not in state_dict), to restore level 0
        self.__dict__["dense_blocks"] = {"attn": layer.self_attn, "mlp": layer.mlp}
        self.cache_index = getattr(layer.self_attn, "layer_idx", None)
        self.cache_keyword = cache_keyword(layer.self_attn)  # pruned blocks take either keyword
        # called with the residual stream entering the MLP block when set (fitness.prefix records it)
        self.tap: Callable[[Tensor], None] | None = None
        for name in ("attention_type", "layer_idx"):
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        **kwargs,
    ) -> Tensor:
        past_key_values = _cache(past_key_values, kwargs)
        if self.self_attn is not None:
            attn_out, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **{self.cache_keyword: past_key_values},
                **kwargs,
            )
            hidden_states = hidden_states + attn_out
        elif past_key_values is not None and self.cache_index is not None:
            stand_in = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            past_key_values.update(stand_in, stand_in, self.cache_index)
        if self.tap is not None:
            self.tap(hidden_states)
        return self.mlp_block(hidden_states)

    def mlp_block(self, hidden_states: Tensor) -> Tensor:
        """The MLP half of the layer: the residual stream after attention in, the layer's output out."""
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states
