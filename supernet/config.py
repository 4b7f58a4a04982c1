"""Typed, validated configuration of a supernet build."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from sparsearch.base.settings import as_dict, require, require_choice, setting
from sparsearch.base.errors import ConfigError
from sparsearch.search.space import Ladder, Unit

CRITERIA = ("obs", "magnitude")
STORE_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_LADDER = Ladder.uniform(0.125)
SERVABLE_ATTN_LADDER = Ladder((0.0, 1.0))
SERVABLE_ALIGNMENT = 256  # DeciLM's ffn_mult resolution


def _ladder(name: str, value: Any) -> Ladder:
    if isinstance(value, Ladder):
        return value
    try:
        return Ladder.parse(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None


@dataclass(frozen=True)
class SupernetConfig:
    """How every unit's ladder of variants is made (see the field help; ``unit_ladders`` maps
    unit names such as ``L003.mlp`` to ladders overriding the kind's, as Týr's rounds use)."""

    attn_ladder: Ladder = setting(DEFAULT_LADDER, "attention levels: a step or a comma list of sparsities",
                                  metavar="STEP|LIST")
    mlp_ladder: Ladder = setting(DEFAULT_LADDER, "MLP levels: a step or a comma list of sparsities",
                                 metavar="STEP|LIST")
    mlp_alignment: int = setting(32, "kept MLP channel counts are multiples of this")
    balanced_heads: bool = setting(False, "keep the same number of query heads in every kept KV group")
    criterion: str = setting("obs", "unit pruning criterion (magnitude: activation-weighted, faster)",
                             choices=CRITERIA)
    refit: bool = setting(True, "least-squares refit of the output projection's kept columns")
    damping: float = setting(0.01, "relative Hessian damping (fraction of the mean diagonal)")
    error_accumulation: bool = setting(True, "prune layer l+1 on the expectation of layer l's variants (Týr)")
    store_dtype: str = setting("bfloat16", "dtype of the stored variant tensors", choices=STORE_DTYPES)
    batch_size: int = setting(4, "calibration sequences per forward pass")
    mlp_chunk: int = setting(0, "MLP channels removed per greedy OBS step (0 = about 256 steps per unit)")
    servable: bool = setting(False, "only shapes vLLM's DeciLM (nemotron-nas) serves: attention kept or removed, "
                             "balanced heads, MLP widths on 256")
    unit_ladders: Mapping[str, Ladder] | None = setting(None, "per-unit ladders by unit name", cli=False)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("attn_ladder", _ladder("attn_ladder", self.attn_ladder))
        set_("mlp_ladder", _ladder("mlp_ladder", self.mlp_ladder))
        if self.unit_ladders is not None:
            set_("unit_ladders", {k: _ladder(f"unit_ladders[{k}]", v) for k, v in self.unit_ladders.items()})
        require_choice("criterion", self.criterion, CRITERIA)
        require_choice("store_dtype", self.store_dtype, STORE_DTYPES)
        require(self.mlp_alignment >= 1, "mlp_alignment", self.mlp_alignment, ">= 1")
        require(0.0 <= self.damping < 1.0, "damping", self.damping, "within [0, 1)")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(self.mlp_chunk >= 0, "mlp_chunk", self.mlp_chunk, ">= 0")
        if self.servable:
            require(self.attn_ladder in (DEFAULT_LADDER, SERVABLE_ATTN_LADDER), "attn_ladder",
                    ",".join(map(str, self.attn_ladder.sparsities)), "0,1 (whole or removed) with servable")
            set_("attn_ladder", SERVABLE_ATTN_LADDER)
            set_("balanced_heads", True)
            if self.mlp_alignment % SERVABLE_ALIGNMENT:
                set_("mlp_alignment", SERVABLE_ALIGNMENT)

    def ladder(self, unit: Unit) -> Ladder:
        if self.unit_ladders and unit.name in self.unit_ladders:
            return self.unit_ladders[unit.name]
        return self.attn_ladder if unit.kind == "attn" else self.mlp_ladder

    def to_dict(self) -> dict[str, Any]:
        d = as_dict(self)
        if self.unit_ladders is not None:
            d["unit_ladders"] = dict(sorted(d["unit_ladders"].items()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SupernetConfig":
        """The config recorded in a supernet manifest (fields it lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def identity(self) -> dict[str, Any]:
        """The fields that change what is stored (a resumed build must match them)."""
        d = self.to_dict()
        d.pop("batch_size")
        return d
