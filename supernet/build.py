"""Build a supernet: stream the model layer by layer, prune every unit at every level, store it."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsearch.search.space import Unit
from sparsearch.supernet.accumulation import advance
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.capture import InputHessian, capture_inputs, run_attention, run_mlp
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.fingerprint import model_fingerprint, tokens_fingerprint
from sparsearch.supernet.memory import release_file_pages
from sparsearch.supernet.modules import PrunedAttention, PrunedMLP
from sparsearch.supernet.store import SupernetStore
from sparsearch.supernet.variants import Variant, attention_variants, cast_variants, mlp_variants


def supernet_header(
    model: nn.Module, tokens: torch.Tensor, cfg: SupernetConfig, *, model_name: str = "", calibration: dict | None = None
) -> dict[str, Any]:
    adapter = DecoderAdapter(model)
    return {
        "model": {
            "name": model_name,
            "architecture": adapter.model_type,
            "fingerprint": model_fingerprint(model, release=True),
            "shape": asdict(adapter.shape),
        },
        "calibration": {
            "fingerprint": tokens_fingerprint(tokens),
            "samples": int(tokens.shape[0]),
            "seqlen": int(tokens.shape[1]),
            **(calibration or {}),
        },
        "config": cfg.identity(),
    }


@torch.no_grad()
def build_supernet(
    model: nn.Module,
    tokens: torch.Tensor,
    out: str,
    cfg: SupernetConfig,
    *,
    model_name: str = "",
    calibration: dict | None = None,
    progress: bool = True,
    record_inputs: list | None = None,
    share: Sequence[str] = (),
) -> SupernetStore:
    """Build (or resume) the supernet of ``model`` on calibration ``tokens`` (N x T) into ``out``.

    Memory holds one copy of the calibration hidden states (advanced in place, one batch at a
    time), one unit's Hessian and variants, and, when the weights are memory-mapped, one layer's
    weights (each layer's pages are released once it is done). A unit already in the
    store is not pruned again: its stored variants are replayed to carry the activations forward.
    ``record_inputs``, when given, receives every layer's input hidden states (for inspection).
    ``share``: earlier supernets of the model whose identical variant files are hard-linked.
    """
    adapter = DecoderAdapter(model)
    store = SupernetStore.create_or_resume(
        out, supernet_header(model, tokens, cfg, model_name=model_name, calibration=calibration), share=share
    )
    if store.calibration() is None:
        store.write_calibration(tokens)
    started = time.perf_counter()
    inputs = capture_inputs(adapter, tokens, cfg.batch_size)
    release_file_pages(model.parameters())  # capturing ran every layer once; each is re-read when built
    hidden = inputs.hidden
    bar = tqdm(range(adapter.shape.num_layers), desc="supernet", unit="layer", disable=not progress)
    for i in bar:
        kw = [inputs.kwargs(i, h) for h in hidden]
        if record_inputs is not None:
            record_inputs.append([h.clone() for h in hidden])
        _build_layer(store, adapter, i, hidden, kw, cfg)
        release_file_pages(adapter.layers[i].parameters())
        bar.set_postfix(stored=f"{store.size_bytes / 2**20:.0f}MiB")
    if not store.manifest.get("complete"):
        store.finish(build_seconds=round(time.perf_counter() - started, 2))
    return store


def _build_layer(store: SupernetStore, adapter: DecoderAdapter, i: int, hidden: list[torch.Tensor], kw: list[dict],
                 cfg: SupernetConfig) -> None:
    """Decoder layer ``i``: its attention, then its MLP, each pruned at every level of its ladder
    (unless stored) and passed by ``hidden`` (the calibration stream, advanced in place; ``kw``:
    each batch's layer keyword arguments)."""
    layer = adapter.layers[i]
    attn, mlp = layer.self_attn, layer.mlp
    rotary = adapter.rotary_fn(attn)
    kv_heads = adapter.shape.num_kv_heads
    _prune_unit(
        store,
        Unit(i, "attn"),
        attn.o_proj,
        run=lambda m, b: run_attention(layer, m, hidden[b], kw[b]),
        dense=attn,
        hidden=hidden,
        prune=lambda H: attention_variants(attn, H, kv_heads, cfg.ladder(Unit(i, "attn")), cfg),
        make_module=lambda v: PrunedAttention(v.tensors, attn, rotary),
        cfg=cfg,
    )
    _prune_unit(
        store,
        Unit(i, "mlp"),
        mlp.down_proj,
        run=lambda m, b: run_mlp(layer, m, hidden[b]),
        dense=mlp,
        hidden=hidden,
        prune=lambda H: mlp_variants(mlp, H, cfg.ladder(Unit(i, "mlp")), cfg),
        make_module=lambda v: PrunedMLP(v.tensors, mlp),
        cfg=cfg,
    )


def _prune_unit(
    store: SupernetStore,
    unit: Unit,
    out_proj: nn.Linear,
    *,
    run: Callable[[nn.Module, int], torch.Tensor],
    dense: nn.Module,
    hidden: list[torch.Tensor],
    prune: Callable[[torch.Tensor], list[Variant]],
    make_module: Callable[[Variant], nn.Module],
    cfg: SupernetConfig,
) -> None:
    """Prune one unit unless the store has it (the Hessian of ``out_proj``'s input is gathered
    while the dense block runs), then advance ``hidden`` (in place) past the unit."""
    todo = not store.has_unit(unit)
    if todo:
        with InputHessian(out_proj) as hess:
            if cfg.error_accumulation:  # only the Hessian: the stream needs the variants first
                for b in range(len(hidden)):
                    run(dense, b)
            else:  # the dense pass is also the stream's next step
                advance(hidden, [], dense, make_module, run, accumulate=False)
        # rounded to the store's dtype, so they equal what a resumed build reads back
        variants = cast_variants(prune(hess.H), getattr(torch, cfg.store_dtype))
        del hess
        store.write_unit(unit, variants)
        if not cfg.error_accumulation:
            return
    else:
        variants = store.read_variants(unit)
    advance(hidden, variants, dense, make_module, run, accumulate=cfg.error_accumulation)
