"""Typed, validated configuration of a supernet build."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from sparsearch.search.space import Ladder, Unit

CRITERIA = ("obs", "magnitude")


@dataclass(frozen=True)
class SupernetConfig:
    """How every unit's ladder of variants is made.

    attn_ladder / mlp_ladder: nominal sparsities of the levels (0 = dense ... 1 = removed).
    mlp_alignment: kept MLP channel counts are multiples of this (hardware-friendly shapes).
    balanced_heads: keep the same number of query heads in every kept KV group.
    criterion: ``obs`` (greedy second-order removal) or ``magnitude`` (activation-weighted, faster).
    refit: least-squares refit of the output projection's kept columns.
    damping: relative Hessian damping (fraction of the mean diagonal).
    error_accumulation: prune layer l+1 on the (1-s)-weighted expectation of layer l's variants.
    store_dtype: dtype of the stored variant tensors.
    batch_size: calibration sequences per forward pass.
    mlp_chunk: MLP channels removed per greedy OBS step (0 = about 256 steps per unit).
    unit_ladders: per-unit ladders (by unit name, e.g. ``L003.mlp``) overriding the kind's ladder,
        as Týr's coarse-to-fine rounds use.
    """

    attn_ladder: Ladder = field(default_factory=lambda: Ladder.uniform(0.125))
    mlp_ladder: Ladder = field(default_factory=lambda: Ladder.uniform(0.125))
    mlp_alignment: int = 32
    balanced_heads: bool = False
    criterion: str = "obs"
    refit: bool = True
    damping: float = 0.01
    error_accumulation: bool = True
    store_dtype: str = "bfloat16"
    batch_size: int = 8
    mlp_chunk: int = 0
    unit_ladders: Mapping[str, Ladder] | None = None

    def __post_init__(self) -> None:
        if self.unit_ladders is not None:
            object.__setattr__(
                self, "unit_ladders",
                {k: v if isinstance(v, Ladder) else Ladder.parse(v) for k, v in self.unit_ladders.items()},
            )
        for name in ("attn_ladder", "mlp_ladder"):
            value = getattr(self, name)
            if not isinstance(value, Ladder):
                object.__setattr__(self, name, Ladder.parse(value))
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.mlp_alignment < 1:
            raise ValueError(f"mlp_alignment must be >= 1, got {self.mlp_alignment}")
        if not 0.0 <= self.damping < 1.0:
            raise ValueError(f"damping must be within [0, 1), got {self.damping}")
        if self.store_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"store_dtype must be float32, bfloat16 or float16, got {self.store_dtype!r}")
        if self.batch_size < 1 or self.mlp_chunk < 0:
            raise ValueError("batch_size must be >= 1 and mlp_chunk >= 0")

    def ladder(self, unit: Unit) -> Ladder:
        if self.unit_ladders and unit.name in self.unit_ladders:
            return self.unit_ladders[unit.name]
        return self.attn_ladder if unit.kind == "attn" else self.mlp_ladder

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attn_ladder"] = list(self.attn_ladder.sparsities)
        d["mlp_ladder"] = list(self.mlp_ladder.sparsities)
        if self.unit_ladders is not None:
            d["unit_ladders"] = {k: list(v.sparsities) for k, v in sorted(self.unit_ladders.items())}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SupernetConfig":
        """The config recorded in a supernet manifest (fields it lacks take their defaults)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def identity(self) -> dict[str, Any]:
        """The fields that change what is stored (a resumed build must match them)."""
        d = self.to_dict()
        d.pop("batch_size")
        return d
