"""Typed, validated configuration of a search run: engine, start, budget (the engine's own
settings are its config dataclass in :data:`sparsearch.search.registry.ENGINES`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsearch.base.settings import as_dict, require, require_choice, setting
from sparsearch.search.registry import BEST_START, BEST_STARTS, ENGINES, INITS, ONE_SHOT, STARTS

COSTS = ("params", "flops")


@dataclass(frozen=True)
class SearchConfig:
    """``engine``: a search or a one-shot allocation (no search), by its name in
    :data:`~sparsearch.search.registry.ENGINES`; ``engine_config``: an instance of that engine's
    config dataclass (default: its defaults). ``init``: where a search starts (``init_config``: that start's settings, for
    ``best`` none). ``patience``: validation patience (see :mod:`sparsearch.search.engine`). ``target_sparsity``: fraction of the prunable
    cost removed; ``tolerance``: the budget band below the limit, as a fraction of the dense cost."""

    engine: str = setting("evolution", "search engine, or a one-shot allocation (no search)", choices=ENGINES)
    init: str = setting("knapsack", "where a search starts: a one-shot allocation, or best (the one of "
                        f"{', '.join(BEST_STARTS[:-1])} and {BEST_STARTS[-1]} with the lowest fitness)", choices=INITS)
    target_sparsity: float = setting(0.5, "fraction of the prunable cost (parameters or FLOPs) removed")
    cost: str = setting("params", "what the budget limits", choices=COSTS)
    tolerance: float = setting(0.01, "budget band below the limit, as a fraction of the dense cost")
    baseline_samples: int = setting(32, "calibration sequences that OWL/FLAP score activations on", metavar="N")
    patience: int = setting(5, "stop a search whose candidates have not improved the validation score for K "
                            "generations or rounds (0: never)", metavar="K")
    seed: int = setting(0, "seed of the search", cli=False)
    engine_config: Any = setting(None, "the engine's settings", cli=False)
    init_config: Any = setting(None, "the settings of the --init start (a one-shot allocation's)", cli=False)

    def __post_init__(self) -> None:
        require_choice("engine", self.engine, ENGINES)
        require_choice("init", self.init, INITS)
        require(0.0 < self.target_sparsity < 1.0, "target_sparsity", self.target_sparsity, "within (0, 1)")
        require_choice("cost", self.cost, COSTS)
        require(0.0 <= self.tolerance < 1.0, "tolerance", self.tolerance, "within [0, 1)")
        require(self.baseline_samples >= 1, "baseline_samples", self.baseline_samples, ">= 1")
        require(self.patience >= 0, "patience", self.patience, ">= 0")
        require(isinstance(self.seed, int) and 0 <= self.seed <= 2**32 - 1, "seed", self.seed,
                "within [0, 2**32 - 1] (numpy's and Optuna's seeds are 32-bit)")
        for field, name in (("engine_config", self.engine), ("init_config", self.init)):
            config_cls = ENGINES[name].config if name in ENGINES else type(None)
            if getattr(self, field) is None and name in ENGINES:
                object.__setattr__(self, field, config_cls())
            require(isinstance(getattr(self, field), config_cls), field, getattr(self, field),
                    f"a {config_cls.__name__} for {name}")

    @property
    def start_names(self) -> tuple[str, ...]:
        """The starts (:data:`~sparsearch.search.registry.STARTS`) a run computes and scores: a
        one-shot engine's own; for a search, its ``init`` (all of the free ones for ``best``; none
        for an implicit start, which the engine makes itself)."""
        if self.engine in ONE_SHOT:
            return (self.engine,)
        if self.init == BEST_START:
            return BEST_STARTS
        return () if STARTS[self.init].implicit else (self.init,)

    def start_config(self, name: str) -> Any:
        """The settings of start ``name``: the engine's when it is the engine, the ``init``'s when it
        is the start, else its defaults."""
        if name == self.engine:
            return self.engine_config
        return self.init_config if name == self.init else STARTS[name].config()

    def to_dict(self) -> dict[str, Any]:
        return {**as_dict(self), "engine_config": as_dict(self.engine_config),
                "init_config": as_dict(self.init_config) if self.init_config is not None else None}
