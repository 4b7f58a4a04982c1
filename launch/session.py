"""The run an engine is built in: what an engine's registered extras builder
(:class:`sparsearch.search.registry.Entry`) may use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sparsearch.launch.evaluators import FitnessFactory, OpenFitness
from sparsearch.search.budget import Budget
from sparsearch.search.space import SearchSpace
from sparsearch.supernet.store import SupernetStore


@dataclass
class Session:
    """``model``: the run's dense model; ``store``/``fitness``: the supernet the run is on and its
    open fitness. An engine that moves the run to other supernets (Týr's rounds) opens their
    fitness with ``factory``, closes the one before, and sets ``store``/``fitness`` to the new ones:
    the run's result indexes the last. ``make_budget(space)``: the run's budget on a space."""

    model: Any
    store: SupernetStore
    fitness: OpenFitness
    factory: FitnessFactory
    run_dir: Path
    make_budget: Callable[[SearchSpace], Budget]
    progress: bool = False
    log: Callable[[str], None] = print
