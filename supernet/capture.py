"""Calibration capture, one decoder layer at a time.

:func:`capture_inputs` records, for every calibration batch, the hidden states entering layer 0
(the forward is stopped there), plus per layer the keyword arguments the model passes to it
(attention mask, rotary position embeddings; the first batch runs on to the last layer for them,
releasing each layer's memory-mapped weights behind it). Blocks of a layer
are then run directly (:func:`run_attention`, :func:`run_mlp`), and :class:`InputHessian`
accumulates ``X^T X`` of a linear layer's input while they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.memory import release_file_pages

Tensor = torch.Tensor
_KEEP = ("attention_mask", "position_embeddings", "position_ids")


class _Stop(Exception):
    pass


@dataclass
class LayerInputs:
    """Hidden states entering a layer (one tensor per batch) and the per-layer call kwargs."""

    hidden: list[Tensor]
    layer_kwargs: list[dict[str, Any]]

    def kwargs(self, layer: int, batch: Tensor) -> dict[str, Any]:
        kw = dict(self.layer_kwargs[layer])
        mask = kw.get("attention_mask")
        if isinstance(mask, Tensor) and mask.shape[0] > batch.shape[0]:
            kw["attention_mask"] = mask[: batch.shape[0]]
        return kw


@torch.no_grad()
def capture_inputs(adapter: DecoderAdapter, tokens: Tensor, batch_size: int) -> LayerInputs:
    """Layer-0 inputs for all calibration sequences and every layer's call kwargs."""
    model, layers = adapter.model, adapter.layers
    device = next(model.parameters()).device
    hidden: list[Tensor] = []
    layer_kwargs: list[dict[str, Any] | None] = [None] * len(layers)

    def grab(i: int) -> Callable:
        def hook(_mod, args, kwargs):
            if layer_kwargs[i] is None:
                layer_kwargs[i] = {k: kwargs[k] for k in _KEEP if k in kwargs}
                if i > 0:  # the first batch has passed layer i - 1, which is built later
                    release_file_pages(layers[i - 1].parameters())
            if i == 0:
                hidden.append(args[0] if args else kwargs["hidden_states"])
            if i == len(layers) - 1 or len(hidden) > 1:
                raise _Stop

        return hook

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for start in range(0, tokens.shape[0], batch_size):
            ids = tokens[start : start + batch_size].to(device)
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return LayerInputs(hidden, layer_kwargs)  # type: ignore[arg-type]


class InputHessian:
    """Context manager summing ``X^T X`` (float32) over the inputs of ``linear`` while active."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        n = linear.in_features
        self.H = torch.zeros(n, n, dtype=torch.float32, device=linear.weight.device)
        self.tokens = 0

    def _hook(self, _mod, args):
        x = args[0].detach().reshape(-1, self.H.shape[0]).to(torch.float32)
        self.H.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def __enter__(self) -> "InputHessian":
        self._handle = self.linear.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def run_attention(layer: nn.Module, attn: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
    """Output of an attention block (without the residual) on a layer's input hidden states."""
    return attn(hidden_states=layer.input_layernorm(hidden), **kwargs)[0]


def run_mlp(layer: nn.Module, mlp: nn.Module, hidden: Tensor) -> Tensor:
    """Output of an MLP block (without the residual) on the hidden states after attention."""
    return mlp(layer.post_attention_layernorm(hidden))


class InputMoments:
    """Context manager summing, per input feature of each of ``linears``, ``x`` and ``x**2``
    (float64) over the tokens that pass while active: the activation statistics that score-based
    allocations (OWL's outlier ratios, FLAP's fluctuation) need, without storing activations."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.linears = linears
        self.sum = {n: torch.zeros(l.in_features, dtype=torch.float64, device=l.weight.device) for n, l in linears.items()}
        self.sq = {n: torch.zeros_like(s) for n, s in self.sum.items()}
        self.tokens = dict.fromkeys(linears, 0)

    def _hook(self, name: str) -> Callable:
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, self.sum[name].shape[0]).to(torch.float64)
            self.sum[name] += x.sum(0)
            self.sq[name] += x.square().sum(0)
            self.tokens[name] += x.shape[0]

        return hook

    def __enter__(self) -> "InputMoments":
        self._handles = [l.register_forward_pre_hook(self._hook(n)) for n, l in self.linears.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def sq_norm(self, name: str) -> Tensor:
        """Per feature, the mean of ``x**2`` over tokens (Wanda's squared input norm, per token)."""
        return (self.sq[name] / max(self.tokens[name], 1)).to(torch.float32)

    def variance(self, name: str) -> Tensor:
        """Per feature, the variance of ``x`` over tokens (FLAP's fluctuation of an input channel)."""
        n = max(self.tokens[name], 1)
        mean = self.sum[name] / n
        return (self.sq[name] / n - mean.square()).clamp_min(0.0).to(torch.float32)


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@torch.no_grad()
def input_moments(model: nn.Module, tokens: Tensor, batch_size: int) -> InputMoments:
    """Run the model over ``tokens`` and return the per-feature input moments of every projection
    of every decoder layer, named ``"{layer}.{path}"`` (e.g. ``"3.mlp.down_proj"``)."""
    layers = DecoderAdapter(model).layers
    linears = {f"{i}.{p}": layer.get_submodule(p) for i, layer in enumerate(layers) for p in PROJECTIONS}
    device = next(model.parameters()).device
    with InputMoments(linears) as moments:
        for start in range(0, tokens.shape[0], batch_size):
            model(input_ids=tokens[start : start + batch_size].to(device), use_cache=False)
    return moments
