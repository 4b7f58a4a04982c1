"""Every engine and every start by name: the one list of each.

- :data:`ENGINES`: ``--engine NAME``. An :class:`Entry` holds the engine class, its config
  dataclass (the command line derives the engine's flags from it) and, for an engine whose
  constructor needs more than the space, budget, fitness and config, the builder of those
  arguments (``"module:function"``, imported when a run builds the engine; it may import torch).
- :data:`STARTS`: ``--init NAME``, the one-shot allocations (:mod:`sparsearch.search.starts`).
  Every start is also a one-shot engine of its name in :data:`ENGINES`.

:func:`make_engine` is how a run builds an engine from its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsearch.search.engine import Engine
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine
from sparsearch.search.knapsack import KnapsackAllocation, KnapsackConfig
from sparsearch.search.nsga2 import NSGA2Config, NSGA2Engine
from sparsearch.search.starts import Start, load
from sparsearch.search.tpe import TPEConfig, TPEEngine
from sparsearch.search.tyr import TyrConfig, TyrEngine


@dataclass(frozen=True)
class Entry:
    """A registered engine. ``extras``: ``"module:function"`` of ``function(session) -> dict``, the
    constructor's other keyword arguments, given the run's session
    (:class:`sparsearch.launch.session.Session`: the model, supernet, fitness and run directory;
    an engine that moves to other supernets updates its ``store`` and ``fitness``)."""

    engine: type[Engine]
    config: type
    extras: str | None = None


ENGINES: dict[str, Entry] = {
    "evolution": Entry(EvolutionEngine, EvolutionConfig),
    "nsga2": Entry(NSGA2Engine, NSGA2Config),
    "tpe": Entry(TPEEngine, TPEConfig),
    "tyr": Entry(TyrEngine, TyrConfig, extras="sparsearch.launch.tyr_rounds:tyr_extras"),
}

STARTS: dict[str, Start] = {
    "uniform": Start("sparsearch.search.starts:uniform", implicit=True),
    "owl": Start("sparsearch.supernet.owl:owl_start", activations=True),
    "flap": Start("sparsearch.supernet.flap:flap_start", activations=True),
    "knapsack": Start("sparsearch.search.starts:knapsack", KnapsackConfig, engine=KnapsackAllocation),
}

ENGINES.update({name: Entry(start.one_shot(name), start.config) for name, start in STARTS.items()})

ONE_SHOT = tuple(STARTS)
BEST_START = "best"  # --init best: the starts that cost no evaluations; the lowest fitness wins
BEST_STARTS = tuple(name for name, start in STARTS.items() if not start.probes_fitness)
INITS = ONE_SHOT + (BEST_START,)


def make_engine(name: str, space, budget, fitness, config: Any = None, *, session: Any = None,
                **kwargs: Any) -> Engine:
    """Engine ``name`` of :data:`ENGINES` on ``space``/``budget``/``fitness`` (``config``: its
    config, default the defaults). With a ``session``, an engine that registers ``extras`` gets
    them; ``kwargs`` go to the constructor as they are (``run_dir``, ``seed``, ``starts``, ...,
    and extras a caller makes itself, e.g. a test's)."""
    entry = ENGINES[name]
    extras = load(entry.extras)(session) if entry.extras and session is not None else {}
    return entry.engine(space, budget, fitness, entry.config() if config is None else config, **extras, **kwargs)
