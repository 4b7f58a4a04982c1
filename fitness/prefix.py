"""Scoring genomes from a shared prefix: the residual stream of a *base* genome, kept per unit.

Every unit before the first unit where a genome differs from the base computes exactly what it
computes in the base, so the hidden states entering each unit of the base are computed once per
fitness batch (:class:`PrefixStates`, one pass of the base) and the genome runs only from its first
differing unit on (:func:`run_from`). A replace-one-unit probe of the knapsack (base: the dense
genome) runs only its unit and the layers after it, and the levels of one unit share that prefix;
re-probes around a genome (base: that genome) do the same. The arithmetic is the full forward
pass's, op for op, so a score from the prefix equals the full pass's score exactly.

Which base, and whether it pays, is decided per batch of genomes (:func:`choose_base`): the
per-unit most common level, used when the passes saved exceed the one pass of the base.
The states are held in memory up to a byte bound and spilled to a temporary safetensors file per
batch beyond it (read back tensor by tensor, memory-mapped).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from sparsearch.search.space import Genome

Tensor = torch.Tensor


def first_difference(genome: Genome, base: Genome) -> int:
    """The index of the first unit where ``genome`` differs from ``base`` (``len(base)`` if none)."""
    return next((i for i, (g, b) in enumerate(zip(genome, base)) if g != b), len(base))


def choose_base(genomes: Sequence[Genome], *, min_saving: float = 1.0) -> Genome | None:
    """The base genome for scoring ``genomes`` from a shared prefix, or ``None`` when it does not pay.

    The base is each unit's most common level among the genomes (ties: the lowest level). Scoring
    from it costs one full pass of the base plus, per genome, the fraction of the units from its
    first difference on; it is chosen when the fractions saved add up to more than
    ``1 + min_saving`` passes (the base's own pass, and a margin for the stored states' traffic).
    """
    if len(genomes) < 2:
        return None
    units = len(genomes[0])
    base = tuple(min(Counter(g[u] for g in genomes).most_common(), key=lambda c: (-c[1], c[0]))[0]
                 for u in range(units))
    saved = sum(first_difference(g, base) / units for g in genomes)
    return base if saved > 1.0 + min_saving else None


class PrefixStates:
    """The hidden states entering every unit of a stitched ``model`` (and leaving its last unit), on
    batches of token ids, with the keyword arguments the model passes to each layer.

    ``state(batch, unit)`` is the residual stream entering unit ``unit`` (units ordered as the search
    space's: attention, then MLP, layer by layer); ``state(batch, units)`` is the last layer's output.
    """

    def __init__(self, layers: nn.ModuleList, model: nn.Module, batches: Sequence[Tensor], *,
                 memory_bytes: int, spill_dir: str | None = None):
        self.units = 2 * len(layers)
        self._memory: list[list[Tensor] | None] = []
        self._files: list[Path | None] = []
        self.kwargs: list[list[dict[str, Any]]] = []
        self._dir: Path | None = None
        self._spill_dir = spill_dir
        used = 0
        device = next(model.parameters()).device
        for ids in batches:
            states, kwargs = _capture(layers, model, ids.to(device))
            size = sum(t.numel() * t.element_size() for t in states)
            if used + size <= memory_bytes:
                self._memory.append(states)
                self._files.append(None)
                used += size
            else:
                self._memory.append(None)
                self._files.append(self._spill(len(self._files), states))
            self.kwargs.append(kwargs)
        self.bytes_in_memory = used

    def _spill(self, index: int, states: list[Tensor]) -> Path:
        from safetensors.torch import save_file

        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="sparsearch-prefix-", dir=self._spill_dir))
            weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        path = self._dir / f"batch{index:05d}.safetensors"
        seen: set[int] = set()  # a removed block passes its input on: two units share one tensor
        tensors = {}
        for u, t in enumerate(states):
            tensors[f"s{u}"] = t.detach().cpu().contiguous() if id(t) not in seen else t.detach().cpu().clone()
            seen.add(id(t))
        save_file(tensors, str(path))
        return path

    @property
    def spilled(self) -> int:
        """Batches whose states live on disk."""
        return sum(f is not None for f in self._files)

    def state(self, batch: int, unit: int, device: torch.device) -> Tensor:
        held = self._memory[batch]
        if held is not None:
            return held[unit]
        from safetensors import safe_open

        with safe_open(str(self._files[batch]), framework="pt") as f:
            return f.get_tensor(f"s{unit}").to(device)


def _capture(layers: nn.ModuleList, model: nn.Module, ids: Tensor) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """One forward pass of the stitched ``model``'s decoder on ``ids``: the residual stream entering
    every attention block (a pre-hook on each layer) and every MLP block (the layer's ``tap``), the
    last layer's output, and each layer's keyword arguments."""
    states: list[Tensor | None] = [None] * (2 * len(layers) + 1)
    kwargs: list[dict[str, Any]] = [{} for _ in layers]
    handles = []

    def layer_hook(i: int):
        def hook(_mod, args, kw):
            states[2 * i] = args[0] if args else kw["hidden_states"]
            kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}
        return hook

    def tap(i: int):
        def record(hidden: Tensor) -> None:
            states[2 * i + 1] = hidden
        return record

    def out_hook(_mod, _args, output):
        states[-1] = output

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(layer_hook(i), with_kwargs=True))
        layer.tap = tap(i)
    handles.append(layers[len(layers) - 1].register_forward_hook(out_hook))
    try:
        model.model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for layer in layers:
            layer.tap = None
    return states, kwargs  # type: ignore[return-value]


def run_from(model: nn.Module, layers: nn.ModuleList, unit: int, hidden: Tensor, kwargs: list[dict[str, Any]]) -> Tensor:
    """The logits of the stitched ``model`` from the residual stream ``hidden`` entering ``unit``
    (``2 * len(layers)``: the last layer's output), running the units from there on as the model's
    own forward pass does."""
    layer, part = divmod(unit, 2)
    if part == 1:  # enter at the MLP block of ``layer``
        hidden = layers[layer].mlp_block(hidden)
        layer += 1
    for i in range(layer, len(layers)):
        hidden = layers[i](hidden, **kwargs[i])
    return model.get_output_embeddings()(model.model.norm(hidden))
