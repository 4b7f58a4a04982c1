"""Every engine by its ``--engine`` name, with its config dataclass (the one list of engines).

The command line derives its engine flags from the config dataclasses here, and one-shot
allocations (``Engine.one_shot``) double as ``--init`` starts for the searches.
"""

from __future__ import annotations

from sparsearch.search.engine import Engine
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine
from sparsearch.search.knapsack import KnapsackAllocation, KnapsackConfig
from sparsearch.search.nsga2 import NSGA2Config, NSGA2Engine
from sparsearch.search.oneshot import FLAPAllocation, OneShotConfig, OWLAllocation, UniformAllocation
from sparsearch.search.tpe import TPEConfig, TPEEngine
from sparsearch.search.tyr import TyrConfig, TyrEngine

ENGINES: dict[str, tuple[type[Engine], type]] = {
    "evolution": (EvolutionEngine, EvolutionConfig),
    "nsga2": (NSGA2Engine, NSGA2Config),
    "tpe": (TPEEngine, TPEConfig),
    "tyr": (TyrEngine, TyrConfig),
    "uniform": (UniformAllocation, OneShotConfig),
    "owl": (OWLAllocation, OneShotConfig),
    "flap": (FLAPAllocation, OneShotConfig),
    "knapsack": (KnapsackAllocation, KnapsackConfig),
}

ONE_SHOT = tuple(name for name, (engine, _) in ENGINES.items() if engine.one_shot)
BEST_START = "best"  # --init best: the one-shot allocations that cost no evaluations; the lowest fitness wins
BEST_STARTS = tuple(name for name in ONE_SHOT if not ENGINES[name][0].probes_fitness)
INITS = ONE_SHOT + (BEST_START,)
