"""The search space: units, their ladders of levels, genomes and their exact parameter cost.

A *unit* is one prunable block (the attention or the MLP block of one decoder layer). A *level*
is one entry of a unit's ladder, from 0 (dense) up to 1 (block removed). A *genome* is one level
index per unit, ordered as ``SearchSpace.units`` (by layer, then attention before MLP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sparsearch.base.errors import SparsearchError

UNIT_KINDS = ("attn", "mlp")

Genome = tuple[int, ...]


@dataclass(frozen=True, order=True)
class Unit:
    layer: int
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit kind must be one of {UNIT_KINDS}, got {self.kind!r}")
        if self.layer < 0:
            raise ValueError(f"layer index must be >= 0, got {self.layer}")

    @property
    def name(self) -> str:
        return f"L{self.layer:03d}.{self.kind}"

    @classmethod
    def parse(cls, name: str) -> "Unit":
        layer, kind = name.split(".")
        return cls(int(layer[1:]), kind)


@dataclass(frozen=True)
class Ladder:
    """Nominal sparsities of a unit kind's levels: strictly increasing, from 0.0 to 1.0, finite,
    at most :attr:`MAX_LEVELS` of them."""

    sparsities: tuple[float, ...]

    MAX_LEVELS = 64  # a unit's variants are all built and stored: more is a typo, not a ladder

    def __post_init__(self) -> None:
        s = tuple(float(x) for x in self.sparsities)
        object.__setattr__(self, "sparsities", s)
        if len(s) < 2:
            raise ValueError("a ladder needs at least two levels (0.0 and 1.0)")
        if len(s) > self.MAX_LEVELS:
            raise ValueError(f"a ladder has at most {self.MAX_LEVELS} levels, got {len(s)}")
        if not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in s):
            raise ValueError(f"ladder sparsities must be numbers within [0, 1], got {s}")
        if s[0] != 0.0 or s[-1] != 1.0:
            raise ValueError(f"a ladder must start at 0.0 (dense) and end at 1.0 (removed), got {s}")
        if any(b <= a for a, b in zip(s, s[1:])):
            raise ValueError(f"ladder sparsities must be strictly increasing, got {s}")

    def to_json(self) -> list[float]:
        return list(self.sparsities)

    @classmethod
    def uniform(cls, step: float) -> "Ladder":
        """Levels 0, step, 2*step, ..., 1 (``1/step`` must be a whole number)."""
        if not (math.isfinite(step) and 1.0 / (cls.MAX_LEVELS - 1) <= step <= 1.0):
            raise ValueError(f"ladder step must be within [1/{cls.MAX_LEVELS - 1}, 1] (at most {cls.MAX_LEVELS} levels), "
                             f"got {step}")
        n = round(1.0 / step)
        if n < 1 or not math.isclose(n * step, 1.0, rel_tol=1e-9):
            raise ValueError(f"ladder step must divide 1.0 evenly, got {step}")
        return cls(tuple(i / n for i in range(n + 1)))

    @classmethod
    def parse(cls, text: str | Sequence[float]) -> "Ladder":
        """``"0.125"`` (a step) or ``"0,0.25,0.5,1"`` (explicit levels) or a list of floats."""
        if isinstance(text, str):
            parts = [p for p in text.replace(" ", "").split(",") if p]
            if len(parts) == 1:
                return cls.uniform(float(parts[0]))
            return cls(tuple(float(p) for p in parts))
        return cls(tuple(text))

    def __len__(self) -> int:
        return len(self.sparsities)


@dataclass(frozen=True)
class Level:
    """One concrete variant of a unit: its nominal sparsity, exact kept parameters and structure."""

    sparsity: float
    params: int
    kept: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpace:
    """Units with their levels; the exact parameter cost of a genome is a sum over units. A unit
    has its dense level 0 and, in order of sparsity, pruned levels down to removed; a unit with only
    level 0 is kept dense by every genome (:meth:`keep_dense`)."""

    units: tuple[Unit, ...]
    levels: tuple[tuple[Level, ...], ...]

    def __post_init__(self) -> None:
        if len(self.units) != len(self.levels):
            raise ValueError("one tuple of levels per unit is required")
        for unit, lv in zip(self.units, self.levels):
            if not lv or lv[0].sparsity != 0.0:
                raise ValueError(f"unit {unit.name}: level 0 must be dense")
            if len(lv) > 1 and lv[-1].params != 0:  # one level: a unit every genome keeps dense
                raise ValueError(f"unit {unit.name}: the last level must be removed")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "SearchSpace":
        units, levels = [], []
        for name, entry in manifest["units"].items():
            units.append(Unit.parse(name))
            levels.append(tuple(Level(l["sparsity"], int(l["params"]), dict(l["kept"])) for l in entry["levels"]))
        order = sorted(range(len(units)), key=lambda i: (units[i].layer, UNIT_KINDS.index(units[i].kind)))
        return cls(tuple(units[i] for i in order), tuple(levels[i] for i in order))

    def keep_dense(self, names: Sequence[str]) -> "SearchSpace":
        """This space with the units ``names`` offered only at their dense level (level 0 keeps
        its index, so genomes still index the supernet's levels)."""
        known = {u.name for u in self.units}
        unknown = sorted(set(names) - known)
        if unknown:
            raise SparsearchError(f"no units {', '.join(unknown)} in the space")
        return SearchSpace(self.units, tuple(lv[:1] if u.name in names else lv
                                             for u, lv in zip(self.units, self.levels)))

    # -- costs -----------------------------------------------------------------------------
    @property
    def dense_params(self) -> int:
        return sum(lv[0].params for lv in self.levels)

    def params(self, genome: Genome) -> int:
        self.validate(genome)
        return sum(lv[g].params for lv, g in zip(self.levels, genome))

    def sparsity(self, genome: Genome) -> float:
        """Fraction of prunable parameters removed by ``genome``."""
        return 1.0 - self.params(genome) / self.dense_params

    def validate(self, genome: Genome) -> None:
        if len(genome) != len(self.units):
            raise SparsearchError(f"genome has {len(genome)} levels but the space has {len(self.units)} units")
        for unit, lv, g in zip(self.units, self.levels, genome):
            if not 0 <= g < len(lv):
                raise SparsearchError(f"level {g} of unit {unit.name} is outside its ladder 0..{len(lv) - 1}")

    # -- reference genomes -------------------------------------------------------------------
    @property
    def dense(self) -> Genome:
        return tuple(0 for _ in self.units)

    def uniform(self, target_sparsity: float) -> Genome:
        """Every unit at the level whose kept parameters are closest to ``1 - target_sparsity`` of
        its dense parameters (ties go to the sparser level)."""
        return self.nearest([target_sparsity] * len(self.units))

    def nearest(self, sparsities: Sequence[float]) -> Genome:
        """Per unit, the level whose kept parameters are closest to ``1 - sparsity`` of its dense
        parameters (ties go to the sparser level)."""
        if len(sparsities) != len(self.units):
            raise SparsearchError(f"{len(sparsities)} sparsities for {len(self.units)} units")
        genome = []
        for lv, s in zip(self.levels, sparsities):
            if not 0.0 <= s <= 1.0:
                raise SparsearchError(f"target sparsity must be within [0, 1], got {s}")
            goal = (1.0 - s) * lv[0].params
            genome.append(min(range(len(lv)), key=lambda i: (abs(lv[i].params - goal), lv[i].params)))
        return tuple(genome)

    def per_layer(self, genome: Genome) -> list[dict[str, Any]]:
        """Per decoder layer, the kept structure of its attention and MLP blocks."""
        rows: dict[int, dict[str, Any]] = {}
        for unit, lv, g in zip(self.units, self.levels, genome):
            row = rows.setdefault(unit.layer, {"layer": unit.layer})
            row[unit.kind] = {"level": g, "sparsity": lv[g].sparsity, "params": lv[g].params, **lv[g].kept}
        return [rows[k] for k in sorted(rows)]
