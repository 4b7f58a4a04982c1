"""Starts: one-shot allocations that a run computes before it searches, each registered once in
:data:`sparsearch.search.registry.STARTS`.

A start is where a search begins (``--init NAME``) and, scored alone on the final stage, a
one-shot engine of its own (``--engine NAME``: no search). A registered :class:`Start` names the
function that computes its genome as ``"module:function"``, imported only when a run computes
it, so a start that reads the model's weights or activations (OWL, FLAP: :mod:`sparsearch.supernet`)
may import torch while this package does not. The function is called as ``function(ctx, config)``
with a :class:`StartContext` (what the run offers a start) and the start's settings, and returns a
genome, or a :data:`~sparsearch.search.engine.StartProvider` that the engine calls with the run's
fitness (the knapsack's probes are evaluations of the run).
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from typing import Any, Callable

from sparsearch.search.budget import Budget
from sparsearch.search.engine import Engine, StartProvider
from sparsearch.search.knapsack import KnapsackConfig, KnapsackStart
from sparsearch.search.oneshot import OneShotConfig, OneShotEngine
from sparsearch.search.space import Genome, SearchSpace


def load(path: str) -> Any:
    """The object ``"package.module:name"`` names (the module imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StartContext:
    """What a run offers its starts: the space and budget, the target sparsity, the run's seed
    (:meth:`rng`), progress and log, and for starts that read the dense model, the model and its
    input moments on calibration sequences (``activations()``, computed once on the first call,
    :func:`sparsearch.supernet.capture.input_moments`)."""

    space: SearchSpace
    budget: Budget
    target: float
    seed: int = 0
    progress: bool = False
    log: Callable[[str], None] | None = None
    model: Any = None
    activations: Callable[[], Any] | None = None

    def rng(self) -> random.Random:
        """A generator of the run's seed, new for every start (starts do not disturb each other)."""
        return random.Random(self.seed)


@dataclass(frozen=True)
class Start:
    """A registered start. ``compute``: ``"module:function"`` of ``function(ctx, config)``;
    ``config``: its settings dataclass (flags of ``--engine NAME`` and ``--init NAME``);
    ``engine``: the one-shot engine class that scores it alone (its ``probes_fitness`` says whether
    the start costs evaluations); ``activations``: it calls ``ctx.activations()``, so the run draws
    the calibration sequences they are measured on; ``implicit``: it is where every engine starts
    when given no start (:meth:`~sparsearch.search.engine.Engine.uniform_genome`), so as ``--init``
    the run computes nothing."""

    compute: str
    config: type = OneShotConfig
    engine: type[OneShotEngine] = OneShotEngine
    activations: bool = False
    implicit: bool = False

    @property
    def probes_fitness(self) -> bool:
        return self.engine.probes_fitness

    def genome(self, ctx: StartContext, config: Any) -> Genome | StartProvider:
        return load(self.compute)(ctx, config)

    def one_shot(self, name: str) -> type[Engine]:
        """The one-shot engine of this start registered as ``name``."""
        return self.engine.of(name)


def uniform(ctx: StartContext, config: OneShotConfig) -> Genome:
    """Every unit at the level nearest the target, repaired into the budget band."""
    return ctx.budget.repair(ctx.space.uniform(ctx.target), ctx.rng())


def knapsack(ctx: StartContext, config: KnapsackConfig) -> StartProvider:
    """The knapsack allocation of probe scores (:mod:`sparsearch.search.knapsack`), computed by the
    engine with the run's cached fitness."""
    return KnapsackStart.of(config, progress=ctx.progress, log=ctx.log)

