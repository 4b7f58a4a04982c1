"""A synthetic fitness with a known, non-uniform optimum, for engine tests (no torch)."""

from __future__ import annotations

import hashlib

from sparsearch.search.space import Level, SearchSpace, Unit


def synthetic_space(layers: int = 6, attn_levels: int = 5, mlp_levels: int = 9) -> SearchSpace:
    units, levels = [], []
    for l in range(layers):
        units.append(Unit(l, "attn"))
        levels.append(tuple(Level(i / (attn_levels - 1), round(400 * (1 - i / (attn_levels - 1)))) for i in range(attn_levels)))
        units.append(Unit(l, "mlp"))
        levels.append(tuple(Level(i / (mlp_levels - 1), round(800 * (1 - i / (mlp_levels - 1)))) for i in range(mlp_levels)))
    return SearchSpace(tuple(units), tuple(levels))


class SyntheticFitness:
    """``sum_u importance_u * sparsity_u^2`` plus deterministic noise that shrinks with the stage:
    unimportant units (odd layers, MLPs) should be pruned more than important ones."""

    def __init__(self, space: SearchSpace, survivors=(4, 2, 1), noise=(0.05, 0.01, 0.0), fail_after: int | None = None,
                 counter: dict | None = None):
        self.space = space
        self.survivors = survivors
        self.noise = noise
        self.importance = [(3.0 if u.layer % 2 == 0 else 0.5) * (2.0 if u.kind == "attn" else 1.0) for u in space.units]
        self.counter = counter if counter is not None else {"calls": 0}
        self.fail_after = fail_after

    @property
    def calls(self) -> int:
        return self.counter["calls"]

    def true(self, genome) -> float:
        return sum(w * lv[g].sparsity ** 2 for w, lv, g in zip(self.importance, self.space.levels, genome))

    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        out = []
        for i, g in enumerate(genomes):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("killed")
            self.counter["calls"] += 1
            key = (tuple(g), stage) if not sample else (tuple(g), stage, sample)
            h = int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16) / 2**32
            score = self.true(g) + self.noise[stage] * (h - 0.5)
            out.append(score)
            if on_result:
                on_result(i, score)
        return out


def synthetic_rebuild(layers: int = 6, fail_after: int | None = None, counter: dict | None = None):
    """A ``rebuild`` for Týr rounds: the synthetic space with the given per-unit ladders (its
    fitness shares ``counter`` and ``fail_after`` with round 0's)."""

    def rebuild(round_index, ladders):
        base = synthetic_space(layers)
        levels = []
        for unit, lv in zip(base.units, base.levels):
            dense = lv[0].params
            levels.append(tuple(Level(s, round(dense * (1 - s))) for s in ladders[unit.name].sparsities))
        space = SearchSpace(base.units, tuple(levels))
        return space, SyntheticFitness(space, fail_after=fail_after, counter=counter)

    return rebuild
