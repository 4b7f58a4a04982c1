"""Apply a genome to a loaded model by swapping only the units whose level changed.

Every decoder layer is wrapped once in a :class:`~supernet.modules.StitchedLayer`; a unit at a
pruned level gets a module with real, smaller tensors read from the supernet, a removed unit is
``None`` (skipped), and the dense level restores the model's original module.
"""

from __future__ import annotations

from torch import nn

from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Genome, SearchSpace
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.fingerprint import model_fingerprint
from sparsearch.supernet.modules import PrunedAttention, PrunedMLP, StitchedLayer
from sparsearch.supernet.store import SupernetStore


class Stitcher:
    """Holds a model and a supernet; ``apply(genome)`` turns the model into that candidate.

    The dense modules are kept (by each :class:`StitchedLayer`) so that any later genome can
    return a unit to level 0; the model is modified in place. Its fingerprint is checked before
    the first swap (a stitched model no longer has the dense fingerprint).
    """

    def __init__(self, model: nn.Module, store: SupernetStore, *, check_fingerprint: bool = True):
        self.adapter = DecoderAdapter(model)
        if check_fingerprint:
            store.check_model(model_fingerprint(model))
        self.model = model
        self.store = store
        self.space: SearchSpace = store.space()
        if len(self.space.units) != 2 * self.adapter.shape.num_layers:
            raise SparsearchError(
                f"supernet has {len(self.space.units)} units but the model has {self.adapter.shape.num_layers} layers"
            )
        layers = self.adapter.layers
        self._dense: dict[str, nn.Module] = {}
        for i in range(len(layers)):
            if not isinstance(layers[i], StitchedLayer):
                layers[i] = StitchedLayer(layers[i])
            self._dense[f"L{i:03d}.attn"] = layers[i].dense_blocks["attn"]
            self._dense[f"L{i:03d}.mlp"] = layers[i].dense_blocks["mlp"]
        self._rotary = self.adapter.rotary_fn(self._dense["L000.attn"])
        self.genome: Genome = self.space.dense

    def apply(self, genome: Genome) -> int:
        """Make the model the candidate ``genome``; returns how many units were swapped."""
        genome = tuple(int(g) for g in genome)
        self.space.validate(genome)
        swapped = 0
        for idx, (unit, old, new) in enumerate(zip(self.space.units, self.genome, genome)):
            if old == new:
                continue
            layer = self.adapter.layers[unit.layer]
            dense = self._dense[unit.name]
            tensors = self.store.read(unit, new)
            if tensors is not None:
                module = PrunedAttention(tensors, dense, self._rotary) if unit.kind == "attn" else PrunedMLP(tensors, dense)
            elif self.space.levels[idx][new].params == 0:
                module = None
            else:
                module = dense
            setattr(layer, "self_attn" if unit.kind == "attn" else "mlp", module)
            swapped += 1
        self.genome = genome
        return swapped
