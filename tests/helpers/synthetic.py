"""A synthetic fitness with a known, non-uniform optimum, for engine tests (no torch)."""

from __future__ import annotations

import hashlib

from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.registry import ENGINES
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


def make_budget(space: SearchSpace):
    """The tests' budget: half the parameters, a 2% band."""
    return Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.02)


QUICK = {
    "evolution": dict(generations=12, offspring=8),
    "nsga2": dict(population=24, generations=12),
    "tpe": dict(trials=40, startup_trials=8),
    "tyr": dict(rounds=3, generations=4, offspring=6),
}
"""Settings that keep an engine's synthetic runs short (an engine not named here runs with its defaults)."""


def search_engines() -> list[str]:
    """The registered engines that search (not the one-shot allocations), in registry order."""
    return [name for name, entry in ENGINES.items() if not entry.engine.one_shot]


def quick_config(name: str, **settings):
    """Engine ``name``'s config: :data:`QUICK`'s settings, then ``settings``."""
    return ENGINES[name].config(**{**QUICK.get(name, {}), **settings})


def synthetic_extras(name: str, fail_after: int | None = None, counter: dict | None = None,
                     fitness: type | None = None) -> dict:
    """On the synthetic fitness, what engine ``name``'s registered extras builder gives a real
    run (Týr's supernet rebuilds: :func:`synthetic_rebuild`, its rounds' fitness of class
    ``fitness``); none for an engine that registers none."""
    extras = ENGINES[name].extras
    if extras is None:
        return {}
    if extras == "sparsearch.launch.tyr_rounds:tyr_extras":
        rebuild = synthetic_rebuild(fail_after=fail_after, counter=counter)
        if fitness is not None:
            base = rebuild
            rebuild = lambda r, ladders: (lambda sp: (sp, fitness(sp)))(base(r, ladders)[0])  # noqa: E731
        return {"rebuild": rebuild, "make_budget": make_budget}
    raise AssertionError(f"no synthetic stand-in for engine {name}'s extras ({extras}): add one here")
