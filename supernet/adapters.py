"""Architecture adapters: where each decoder layer keeps q/k/v/o and gate/up/down, and its shape.

Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm) share one layout:
``model.model.layers[i].{input_layernorm, self_attn, post_attention_layernorm, mlp}``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from sparsearch.base.errors import SparsearchError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class DecoderShape:
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def from_config(cls, cfg) -> "DecoderShape":
        """The decoder's shapes from a transformers config (KV heads and head_dim defaulted as
        the Llama family does)."""
        heads = cfg.num_attention_heads
        return cls(
            num_layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            intermediate=cfg.intermediate_size,
        )

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads


class DecoderAdapter:
    """Thin accessor over a loaded ``*ForCausalLM`` of a supported architecture."""

    def __init__(self, model: nn.Module):
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise SparsearchError(
                f"unsupported architecture {model_type}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self.model = model
        self.model_type = model_type
        self.shape = DecoderShape.from_config(model.config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def mlp(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp

    @staticmethod
    def rotary_fn(attention: nn.Module) -> Callable:
        """The architecture's own ``apply_rotary_pos_emb`` (so pruned heads rotate bit-identically)."""
        return importlib.import_module(type(attention).__module__).apply_rotary_pos_emb
