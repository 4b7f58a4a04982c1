"""The steps of a run, as plain functions over typed configs: supernet, fitness tokens, budget,
starts, search; :func:`search` runs them in order and returns a :class:`SearchOutcome`."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sparsearch.fitness.config import FitnessConfig, TrainConfig
from sparsearch.fitness.data import CalibrationConfig
from sparsearch.launch import tokens as run_tokens
from sparsearch.launch.cluster import ClusterConfig
from sparsearch.launch.config import SearchConfig
from sparsearch.launch.evaluators import FitnessFactory, OpenFitness
from sparsearch.launch.phases import PhaseClock, TimedFitness
from sparsearch.search.budget import Budget, CostModel
from sparsearch.base.settings import as_dict
from sparsearch.search.engine import Result
from sparsearch.base.errors import SparsearchError
from sparsearch.search.knapsack import KnapsackConfig, KnapsackStart
from sparsearch.search.registry import BEST_START, BEST_STARTS, ENGINES, ONE_SHOT
from sparsearch.search.space import Genome, Ladder, SearchSpace
from sparsearch.supernet.build import build_supernet
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.adapters import DecoderAdapter
from sparsearch.supernet.fingerprint import model_fingerprint, tokens_fingerprint
from sparsearch.supernet.stitch import Stitcher
from sparsearch.supernet.store import SupernetStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class SearchOutcome:
    """What a search found. ``store``/``space``/``budget`` are those the best genome indexes (Týr:
    its last round's); ``baselines`` are the scored one-shot starts ``{name: {genome, kl, sparsity}}``;
    ``stitcher`` holds the run's model, stitched to the best genome."""

    result: Result
    space: SearchSpace
    budget: Budget
    store: SupernetStore
    uniform_genome: Genome
    uniform_fitness: float
    baselines: dict[str, dict[str, Any]]
    schedule: list[dict[str, int]]
    nodes: list[str]
    params_total: int
    stitcher: Stitcher
    validation_tokens: int = 0  # tokens of the validation split (0: none)


def require_fits(model, *, seqlens: dict[str, int], supernet: SupernetConfig | None = None) -> None:
    """Refuse settings this model cannot take: sequences longer than its positions (``seqlens``
    maps a setting's name to its value), an MLP alignment wider than its MLP."""
    positions = getattr(model.config, "max_position_embeddings", None)
    for name, seqlen in seqlens.items():
        if positions and seqlen > positions:
            raise SparsearchError(f"{name} {seqlen} is beyond the model's {positions} positions")
    if supernet is not None:
        width = DecoderAdapter(model).shape.intermediate
        if supernet.mlp_alignment > width:
            raise SparsearchError(f"mlp_alignment {supernet.mlp_alignment} is larger than the model's MLP "
                                  f"({width} channels)")


def ensure_supernet(
    model, tokenizer, out: Path, cfg: SupernetConfig, calib: CalibrationConfig, *, model_name: str,
    progress: bool, log: Log, clock: PhaseClock | None = None,
) -> SupernetStore:
    """Open the finished supernet at ``out``, or build (resume) it there (``clock``: phases
    ``sampling`` and ``build``)."""
    clock = clock or PhaseClock()
    if SupernetStore.is_complete(out):
        store = SupernetStore.open(out)
        store.require_settings(model_fingerprint(model), cfg.identity(),
                               {"samples": calib.samples, "seqlen": calib.seqlen, **calib.describe()})
        return store
    partial = SupernetStore.partial(out)
    tokens = partial.calibration() if partial is not None else None
    if tokens is not None and tokens.shape == (calib.samples, calib.seqlen):
        log(f"resuming the supernet build in {out}")
    else:
        log(f"calibration: {calib.samples} x {calib.seqlen} tokens from {calib.source}"
            + (f" ({calib.location})" if calib.location else ""))
        with clock("sampling"):
            tokens = run_tokens.draw(calib, run_tokens.TokenPlan(calib.seqlen, calib.samples, 0), "calibration",
                                     model, tokenizer, progress=progress)
    with clock("build"):
        return build_supernet(model, tokens, str(out), cfg, model_name=model_name, calibration=calib.describe(),
                              progress=progress)


def make_budget(space: SearchSpace, cfg: SearchConfig, head_dim: int, context: int) -> Budget:
    model = CostModel.params(space) if cfg.cost == "params" else CostModel.flops(space, head_dim=head_dim, context=context)
    return Budget.from_sparsity(model, cfg.target_sparsity, cfg.tolerance)


def baseline_genomes(
    names: tuple[str, ...], model, space: SearchSpace, budget: Budget, target: float, tokens: torch.Tensor | None,
    *, seed: int, batch_size: int, knapsack: KnapsackConfig = KnapsackConfig(), progress: bool = False,
    log: Log | None = None,
) -> dict[str, Genome]:
    """One-shot allocations on ``space`` under ``budget``; ``model`` must be dense. OWL and FLAP
    share one calibration pass over ``tokens``; the knapsack allocation is a provider that the
    engine calls with the run's fitness (its probes are evaluations)."""
    from sparsearch.supernet.capture import input_moments
    from sparsearch.supernet.flap import flap_genome
    from sparsearch.supernet.owl import owl_genome

    moments = input_moments(model, tokens, batch_size) if set(names) & {"owl", "flap"} else None
    out = {}
    for name in names:
        rng = random.Random(seed)
        if name == "uniform":
            out[name] = budget.repair(space.uniform(target), rng)
        elif name == "owl":
            out[name] = owl_genome(model, space, budget, moments, target, rng)[0]
        elif name == "flap":
            out[name] = flap_genome(model, space, budget, moments, rng)[0]
        elif name == "knapsack":
            out[name] = KnapsackStart.of(knapsack, progress=progress, log=log)
        else:
            raise SparsearchError(f"unknown one-shot allocation {name!r}")
    return out


def start_names(cfg: SearchConfig) -> tuple[str, ...]:
    """The one-shot allocations a run scores as starts: a one-shot engine's own; for a search,
    its ``--init`` (all of them for ``best``; none for the default uniform start)."""
    if cfg.engine in ONE_SHOT:
        return (cfg.engine,)
    return {"uniform": (), BEST_START: BEST_STARTS}.get(cfg.init, (cfg.init,))


class TyrRounds:
    """Týr's ``rebuild(round, ladders)``: the round's supernet, built once in ``R/tyr/roundN`` on
    the first supernet's calibration tokens, and its fitness (the previous round's is closed)."""

    def __init__(self, model, store: SupernetStore, supernet_cfg: SupernetConfig, factory: FitnessFactory,
                 fitness: OpenFitness, run_dir: Path, *, progress: bool, log: Log):
        self.model, self.first, self.supernet_cfg, self.factory = model, store, supernet_cfg, factory
        self.store, self.fitness = store, fitness
        self.built = [store]  # supernets whose identical variant files later rounds hard-link
        self.run_dir, self.progress, self.log = run_dir, progress, log
        if supernet_cfg.servable:
            raise SparsearchError("tyr refines every unit's ladder, attention's included; a servable supernet keeps "
                                  "attention whole or removed: search it with another engine")
        self.tokens = store.calibration()
        if self.tokens is None:
            raise SparsearchError(f"supernet at {store.path} keeps no calibration tokens; rebuild it for tyr")

    def __call__(self, round_index: int, ladders: dict[str, Ladder]) -> tuple[SearchSpace, OpenFitness]:
        self.fitness.close()  # the model is dense again: the next round prunes it anew
        out = self.run_dir / "tyr" / f"round{round_index}"
        self.log(f"tyr round {round_index}: supernet in {out}")
        if SupernetStore.is_complete(out):
            store = SupernetStore.open(out)
            self.built.append(store)
        else:
            store = build_supernet(self.model, self.tokens, str(out),
                                   dataclasses.replace(self.supernet_cfg, unit_ladders=ladders),
                                   model_name=self.first.manifest["model"]["name"],
                                   calibration=self.first.manifest["calibration"], progress=self.progress,
                                   share=[str(s.path) for s in self.built])
            self.built.append(store)
        self.store, self.fitness = store, self.factory.open(store)
        return store.space(), self.fitness


def run_settings(cfg: SearchConfig, fitness: FitnessConfig, store: SupernetStore, tokens: torch.Tensor,
                 train: TrainConfig | None = None, train_tokens: torch.Tensor | None = None,
                 validation_tokens: torch.Tensor | None = None) -> dict[str, Any]:
    """What a resumed run must share with the original: everything that changes a score or the
    budget (with training-aware stages, the training settings and tokens too)."""
    out = {"target_sparsity": cfg.target_sparsity, "cost": cfg.cost, "tolerance": cfg.tolerance,
           "schedule": [list(dataclasses.astuple(s)) for s in fitness.token_schedule.stages], "topk": fitness.topk,
           "supernet": store.fingerprint, "fitness_tokens": tokens_fingerprint(tokens),
           "validation_tokens": tokens_fingerprint(validation_tokens) if validation_tokens is not None else None,
           "patience": cfg.patience}
    if train_tokens is not None:
        out["training"] = {**as_dict(train or TrainConfig()), "tokens": tokens_fingerprint(train_tokens)}
    return out


def search(
    model, tokenizer, store: SupernetStore, cfg: SearchConfig, *, fitness: FitnessConfig, calib: CalibrationConfig,
    supernet_cfg: SupernetConfig, run_dir: Path, resume: bool, log: Log, progress: bool,
    model_spec: str | None = None, cluster: ClusterConfig = ClusterConfig(), trust_remote_code: bool = False,
    train: TrainConfig = TrainConfig(), clock: PhaseClock | None = None,
) -> SearchOutcome:
    """Search the budget allocation of ``store`` for ``model`` (dense on entry; stitched to the
    best genome on return). Fitness runs in process, or on Ray actors (``cluster``), each of
    which loads ``model_spec`` itself. ``train``: how training-aware stages train a candidate.
    ``clock`` gets the phases ``sampling`` (the run's tokens), ``teacher``, ``probes``, ``search``
    and ``selection``."""
    clock = clock or PhaseClock()
    schedule = fitness.token_schedule
    space = store.space()
    shape = store.manifest["model"]["shape"]
    budget_of = lambda sp: make_budget(sp, cfg, shape["head_dim"], calib.seqlen)  # noqa: E731
    budget = budget_of(space)
    budget.require_feasible()  # before anything is written or scored
    plan = run_tokens.TokenPlan.of(calib, fitness)
    with clock("sampling"):
        drawn = {split: run_tokens.run_tokens(run_dir, calib, plan, split, model, tokenizer, resume=resume,
                                              progress=progress) for split in run_tokens.FILES}
    tokens, train_tokens, validation_tokens = drawn["fitness"], drawn["training"], drawn["validation"]
    factory = FitnessFactory(model, model_spec=model_spec or store.manifest["model"]["name"], run_dir=run_dir,
                             tokens=tokens, fitness=fitness, cluster=cluster, seed=cfg.seed,
                             trust_remote_code=trust_remote_code, train=train, train_tokens=train_tokens,
                             validation_tokens=validation_tokens)

    names = start_names(cfg)
    baseline_tokens = None
    if set(names) & {"owl", "flap"}:
        log(f"baselines: scoring {', '.join(n for n in names if n in ('owl', 'flap'))} on {cfg.baseline_samples} "
            "calibration sequences")
        baseline_tokens = run_tokens.baseline_tokens(store.calibration(), calib, cfg.baseline_samples, model, tokenizer)
    knapsack = cfg.engine_config if cfg.engine == "knapsack" else cfg.init_config
    with clock("baselines"):
        starts = baseline_genomes(names, model, space, budget, cfg.target_sparsity, baseline_tokens,
                                  seed=cfg.seed, batch_size=fitness.batch_size,
                                  knapsack=knapsack if isinstance(knapsack, KnapsackConfig) else KnapsackConfig(),
                                  progress=progress, log=log)
    starts = {name: clock.timed(g, "probes") if callable(g) else g for name, g in starts.items()}

    with clock("teacher"):
        fit = factory.open(store)
    rounds = None
    try:
        engine_cls = ENGINES[cfg.engine][0]
        extra: dict[str, Any] = {}
        if cfg.engine == "tyr":
            rounds = TyrRounds(model, store, supernet_cfg, factory, fit, run_dir, progress=progress, log=log)
            extra = {"rebuild": rounds, "make_budget": budget_of}
        engine = engine_cls(space, budget, TimedFitness(fit, clock), cfg.engine_config, run_dir=str(run_dir),
                            seed=cfg.seed, log=log, starts=starts, patience=cfg.patience, **extra)
        with clock("search"):
            result = engine.run(resume=resume, settings=run_settings(cfg, fitness, store, tokens, train,
                                                                     train_tokens, validation_tokens))
        baselines = {n: {"genome": list(g), "kl": result.start_scores[n], "sparsity": space.sparsity(g)}
                     for n, g in engine.starts.items()}
        if rounds is not None:
            store, fit = rounds.store, rounds.fitness
        same_supernet = engine.space is space
        space, budget = engine.space, engine.budget
        uniform = space.uniform(cfg.target_sparsity)
        scored = baselines.get("uniform")
        if same_supernet and scored is not None and tuple(scored["genome"]) == uniform:
            uniform_score = scored["kl"]  # scored as a start already, on the same supernet
        else:
            uniform_score = fit.evaluate_many([uniform], len(schedule) - 1)[0]
        nodes = sorted(set(fit.nodes))
    finally:
        if factory.distributed:
            fit.close()
    stitcher = fit.stitcher if not factory.distributed else Stitcher(model, store)
    stitcher.apply(result.best_genome)
    return SearchOutcome(
        result=result, space=space, budget=budget, store=store, uniform_genome=uniform, uniform_fitness=uniform_score,
        baselines=baselines, schedule=[dataclasses.asdict(s) for s in schedule.stages], nodes=nodes,
        params_total=sum(p.numel() for p in model.parameters()), stitcher=stitcher,
        validation_tokens=0 if validation_tokens is None else validation_tokens.numel(),
    )
