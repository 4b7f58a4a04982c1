"""Costs of genomes and the budget a genome must meet.

A cost model gives every (unit, level) a number; a genome's cost is the sum over its units:

- ``params``: exact kept prunable parameters (from the supernet manifest);
- ``flops``: multiply-accumulate FLOPs per token at a context length (linear layers: 2 x weights;
  attention scores and values: 4 x kept query heads x head_dim x mean causal context);
- ``latency``: a per-unit, per-level table measured on the target device (stored with the supernet).

A :class:`Budget` is an upper limit on the cost and a tolerance below it: a genome is *feasible*
when ``limit - tolerance <= cost <= limit`` (spending the budget, not wasting it).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Genome, SearchSpace

COST_KINDS = ("params", "flops", "latency")


@dataclass(frozen=True)
class CostModel:
    kind: str
    table: tuple[tuple[float, ...], ...]  # per unit, per level

    def cost(self, genome: Genome) -> float:
        return float(sum(t[g] for t, g in zip(self.table, genome)))

    def dense(self) -> float:
        return float(sum(max(t) for t in self.table))

    def minimum(self) -> float:
        return float(sum(min(t) for t in self.table))

    @classmethod
    def params(cls, space: SearchSpace) -> "CostModel":
        return cls("params", tuple(tuple(float(l.params) for l in lv) for lv in space.levels))

    @classmethod
    def flops(cls, space: SearchSpace, *, head_dim: int, context: int) -> "CostModel":
        table = []
        for unit, lv in zip(space.units, space.levels):
            row = []
            for l in lv:
                f = 2.0 * l.params
                if unit.kind == "attn":
                    f += 4.0 * l.kept.get("heads", 0) * head_dim * (context + 1) / 2
                row.append(f)
            table.append(tuple(row))
        return cls("flops", tuple(table))

    @classmethod
    def latency(cls, space: SearchSpace, table: Mapping[str, Sequence[float]]) -> "CostModel":
        try:
            rows = tuple(tuple(float(x) for x in table[u.name]) for u in space.units)
        except KeyError as e:
            raise SparsearchError(f"the latency table has no entry for unit {e.args[0]}") from None
        for u, r, lv in zip(space.units, rows, space.levels):
            if len(r) != len(lv):
                raise SparsearchError(f"the latency table of {u.name} has {len(r)} levels, the supernet {len(lv)}")
        return cls("latency", rows)


@dataclass(frozen=True)
class Budget:
    """``limit - tolerance <= cost(genome) <= limit`` under ``model``."""

    model: CostModel
    limit: float
    tolerance: float

    def __post_init__(self) -> None:
        lo, hi = self.model.minimum(), self.model.dense()
        if not lo <= self.limit <= hi:
            raise SparsearchError(
                f"infeasible budget: a {self.model.kind} limit of {self.limit:.6g} is outside "
                f"[{lo:.6g} (every unit at its sparsest level), {hi:.6g} (dense)]"
            )
        if self.tolerance < 0:
            raise SparsearchError("budget tolerance must be >= 0")

    @classmethod
    def from_sparsity(cls, model: CostModel, target_sparsity: float, tolerance: float = 0.01) -> "Budget":
        """Remove ``target_sparsity`` of the dense cost; ``tolerance`` is a fraction of the dense cost."""
        if not 0.0 <= target_sparsity <= 1.0:
            raise SparsearchError(f"infeasible budget: target sparsity {target_sparsity} is outside [0, 1]")
        dense = model.dense()
        return cls(model, (1.0 - target_sparsity) * dense, tolerance * dense)

    def cost(self, genome: Genome) -> float:
        return self.model.cost(genome)

    def require_feasible(self) -> None:
        """Refuse a band that no genome of the space reaches (coarse ladders, a tiny target),
        naming the nearest sparsity targets that are feasible at this tolerance."""
        from sparsearch.search.mckp import choose

        table = [list(t) for t in self.model.table]
        low = self.limit - self.tolerance
        inside = choose([[0.0] * len(t) for t in table], table, low, self.limit)
        if inside is not None and self.feasible(tuple(inside)):
            return
        dense = self.model.dense()
        below = choose([[-c for c in t] for t in table], table, self.model.minimum(), low)  # most cost under the band
        above = choose(table, table, self.limit, dense)  # least cost over it
        near = []
        if above is not None:  # a target this low leaves that genome's cost at its limit
            near.append(math.floor((1 - self.cost(tuple(above)) / dense) * 1e4) / 1e4)
        if below is not None:  # a target this high puts that genome's cost inside its band
            near.append(math.ceil((1 - self.cost(tuple(below)) / dense - self.tolerance / dense) * 1e4) / 1e4)
        raise SparsearchError(
            f"infeasible budget: no genome has a {self.model.kind} cost within "
            f"[{low / dense:.4f}, {self.limit / dense:.4f}] of dense (the target's band); the nearest feasible "
            f"targets are {' and '.join(f'{t:g}' for t in sorted(near))} (or widen --tolerance, or use finer ladders)"
        )

    def feasible(self, genome: Genome) -> bool:
        c = self.cost(genome)
        return self.limit - self.tolerance - 1e-9 <= c <= self.limit + 1e-9

    def within_limit(self, genome: Genome) -> bool:
        return self.cost(genome) <= self.limit + 1e-9

    def repair(
        self, genome: Sequence[int], rng: random.Random, *, frozen: Sequence[int] = (), fill: bool = True
    ) -> Genome:
        """A nearby feasible genome found by random single-level moves: while over the limit,
        make a random unit sparser; then (if ``fill``) while below ``limit - tolerance``, make a
        random unit denser if that keeps it under the limit. Units in ``frozen`` are not moved."""
        g = list(genome)
        table = self.model.table
        frozen_set = set(frozen)
        movable = [i for i in range(len(g)) if i not in frozen_set]
        cost = self.cost(tuple(g))
        while cost > self.limit + 1e-9:
            cands = [i for i in movable if g[i] < len(table[i]) - 1]
            if not cands:
                raise SparsearchError("cannot repair the genome: every movable unit is at its sparsest level")
            i = rng.choice(cands)
            cost += table[i][g[i] + 1] - table[i][g[i]]
            g[i] += 1
        while fill and cost < self.limit - self.tolerance - 1e-9:
            cands = [i for i in movable if g[i] > 0 and cost + table[i][g[i] - 1] - table[i][g[i]] <= self.limit + 1e-9]
            if not cands:
                break
            i = rng.choice(cands)
            cost += table[i][g[i] - 1] - table[i][g[i]]
            g[i] -= 1
        return tuple(g)
