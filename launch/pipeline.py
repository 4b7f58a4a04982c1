"""The steps of a run, as plain functions over its :class:`~sparsearch.launch.runconfig.RunConfig`:
supernet, budget, tokens, starts, search; :func:`search` runs them in order and returns a
:class:`SearchOutcome`."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sparsearch.fitness.config import TrainConfig
from sparsearch.launch import tokens as run_tokens
from sparsearch.launch.config import SearchConfig
from sparsearch.launch.evaluators import FitnessFactory
from sparsearch.launch.phases import PhaseClock, TimedFitness
from sparsearch.launch.runconfig import RunConfig
from sparsearch.launch.session import Session
from sparsearch.search.budget import Budget, CostModel
from sparsearch.base.settings import as_dict
from sparsearch.search.engine import Engine, Result, StartProvider
from sparsearch.base.errors import SparsearchError
from sparsearch.search.registry import STARTS, make_engine
from sparsearch.search.space import Genome, SearchSpace
from sparsearch.search.starts import StartContext
from sparsearch.supernet.build import build_supernet
from sparsearch.supernet.capture import input_moments
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
    ``stitcher`` holds the run's model, stitched to the best genome (``None`` for a driver that holds
    no weights: :mod:`sparsearch.launch.remote` finishes the run); ``cluster``: where the fitness
    and the supernet build ran (:attr:`~sparsearch.launch.evaluators.FitnessFactory.where`)."""

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
    stitcher: Stitcher | None
    cluster: dict[str, Any]
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


def ensure_supernet(model, tokenizer, out: Path, run: RunConfig, *, log: Log,
                    clock: PhaseClock | None = None) -> SupernetStore:
    """Open the finished supernet at ``out``, or build (resume) it there with ``run.supernet`` on
    ``run.calibration`` (``clock``: phases ``sampling`` and ``build``)."""
    cfg, calib, progress = run.supernet, run.calibration, run.progress
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
        return build_supernet(model, tokens, str(out), cfg, model_name=run.model, calibration=calib.describe(),
                              progress=progress)


def make_budget(space: SearchSpace, cfg: SearchConfig, head_dim: int, context: int) -> Budget:
    model = CostModel.params(space) if cfg.cost == "params" else CostModel.flops(space, head_dim=head_dim, context=context)
    return Budget.from_sparsity(model, cfg.target_sparsity, cfg.tolerance)


def starts(model, tokenizer, store: SupernetStore, space: SearchSpace, budget: Budget, run: RunConfig, *,
           log: Log, clock: PhaseClock) -> dict[str, Genome | StartProvider]:
    """The run's starts (``run.search.start_names``), each computed by its registered
    :class:`~sparsearch.search.starts.Start` on ``space`` under ``budget`` (``model`` must be dense;
    clock phase ``baselines``). Starts that read activations share one pass over
    ``baseline_samples`` calibration sequences; a start computed from probes (the knapsack) is a
    provider that the engine calls with the run's fitness, its calls counted as ``probes``."""
    cfg = run.search
    names = cfg.start_names
    reading = [n for n in names if STARTS[n].activations]
    tokens = None
    if reading:
        log(f"baselines: scoring {', '.join(reading)} on {cfg.baseline_samples} calibration sequences")
        tokens = run_tokens.baseline_tokens(store.calibration(), run.calibration, cfg.baseline_samples, model,
                                            tokenizer)
    ctx = StartContext(space, budget, cfg.target_sparsity, seed=cfg.seed, progress=run.progress, log=log, model=model,
                       activations=functools.cache(lambda: input_moments(model, tokens, run.fitness.batch_size)))
    with clock("baselines"):
        out = {name: STARTS[name].genome(ctx, cfg.start_config(name)) for name in names}
    return {name: clock.timed(g, "probes") if callable(g) else g for name, g in out.items()}


def run_tokens_of(model, tokenizer, run: RunConfig) -> dict[str, torch.Tensor | None]:
    """The run's token splits (:data:`~sparsearch.launch.tokens.FILES`: fitness, training,
    validation), drawn once into the run directory (or read back from it on resume)."""
    plan = run_tokens.TokenPlan.of(run.calibration, run.fitness)
    return {split: run_tokens.run_tokens(run.run_dir, run.scoring, plan, split, model, tokenizer,
                                         resume=run.resume, progress=run.progress) for split in run_tokens.FILES}


def run_settings(run: RunConfig, store: SupernetStore, drawn: dict[str, torch.Tensor | None]) -> dict[str, Any]:
    """What a resumed run must share with the original: everything that changes a score or the
    budget, the sources its tokens were drawn from (with training-aware stages, the training
    settings and tokens too); ``drawn``: the run's tokens (:func:`run_tokens_of`)."""
    cfg, fitness, validation = run.search, run.fitness, drawn["validation"]
    out = {"target_sparsity": cfg.target_sparsity, "cost": cfg.cost, "tolerance": cfg.tolerance,
           "schedule": [list(dataclasses.astuple(s)) for s in fitness.token_schedule.stages], "topk": fitness.topk,
           "supernet": store.fingerprint, "fitness_tokens": tokens_fingerprint(drawn["fitness"]),
           "validation_tokens": tokens_fingerprint(validation) if validation is not None else None,
           "patience": cfg.patience, "calibration": run.calibration.describe(),
           "fitness_source": run.scoring.describe()}
    if drawn["training"] is not None:
        out["training"] = {**as_dict(run.train or TrainConfig()), "tokens": tokens_fingerprint(drawn["training"])}
    return out


def search(model, tokenizer, store: SupernetStore, run: RunConfig, *, log: Log,
           clock: PhaseClock | None = None, built_on: dict[str, Any] | None = None,
           stitch: bool = True) -> SearchOutcome:
    """Search the budget allocation of ``store`` for ``model`` (dense on entry; stitched to the
    best genome on return) with ``run``'s settings: its tokens, its starts, then its engine
    (:data:`~sparsearch.search.registry.ENGINES`). Fitness runs in process, or on Ray actors
    (``run.cluster``), each of which loads the model itself (``run.load_spec``). ``clock`` gets the phases
    ``sampling`` (the run's tokens), ``baselines``, ``teacher``, ``probes``, ``search`` and
    ``selection``. ``built_on``: where ``store`` was built, when not in this process; without
    ``stitch``, the model (a weightless shell) is left dense."""
    clock = clock or PhaseClock()
    cfg, space = run.search, store.space()
    budget_of = functools.partial(make_budget, cfg=cfg, head_dim=store.manifest["model"]["shape"]["head_dim"],
                                  context=run.calibration.seqlen)
    budget = budget_of(space)
    budget.require_feasible()  # before anything is written or scored
    with clock("sampling"):
        drawn = run_tokens_of(model, tokenizer, run)
    factory = FitnessFactory(model, model_spec=run.load_spec or store.manifest["model"]["name"], run_dir=run.run_dir,
                             tokens=drawn["fitness"], fitness=run.fitness, cluster=run.cluster, seed=cfg.seed,
                             trust_remote_code=run.trust_remote_code, train=run.train, train_tokens=drawn["training"],
                             validation_tokens=drawn["validation"], built_on=built_on)
    begun = starts(model, tokenizer, store, space, budget, run, log=log, clock=clock)
    with clock("teacher"):
        session = Session(model, store, factory.open(store), factory, run.run_dir, budget_of, progress=run.progress,
                          log=log)
    try:
        engine = make_engine(cfg.engine, space, budget, TimedFitness(session.fitness, clock), cfg.engine_config,
                             session=session, run_dir=str(run.run_dir), seed=cfg.seed, log=log, starts=begun,
                             patience=cfg.patience)
        with clock("search"):
            result = engine.run(resume=run.resume, settings=run_settings(run, store, drawn))
        found = _found(engine, result, session, space, run)
    finally:
        if factory.distributed:
            session.fitness.close()
    stitcher = _stitched(session, result.best_genome) if stitch else None
    return SearchOutcome(**found, stitcher=stitcher, cluster=factory.where,
                         params_total=sum(p.numel() for p in model.parameters()),
                         validation_tokens=0 if drawn["validation"] is None else drawn["validation"].numel())


def _found(engine: Engine, result: Result, session: Session, first_space: SearchSpace,
           run: RunConfig) -> dict[str, Any]:
    """What the run found, on the supernet and fitness it ended on: the :class:`SearchOutcome`
    fields but the stitched model's."""
    space, schedule = engine.space, run.fitness.token_schedule
    baselines = {n: {"genome": list(g), "kl": result.start_scores[n], "sparsity": space.sparsity(g)}
                 for n, g in engine.starts.items()}
    uniform = space.uniform(run.search.target_sparsity)
    scored = baselines.get("uniform")
    if space is first_space and scored is not None and tuple(scored["genome"]) == uniform:
        uniform_score = scored["kl"]  # scored as a start already, on the same supernet
    else:
        uniform_score = session.fitness.evaluate_many([uniform], len(schedule) - 1)[0]
    return dict(result=result, space=space, budget=engine.budget, store=session.store, uniform_genome=uniform,
                uniform_fitness=uniform_score, baselines=baselines,
                schedule=[dataclasses.asdict(s) for s in schedule.stages], nodes=sorted(set(session.fitness.nodes)))


def _stitched(session: Session, genome: Genome) -> Stitcher:
    """The run's model stitched to ``genome`` (in process, the fitness's own stitcher)."""
    stitcher = Stitcher(session.model, session.store) if session.factory.distributed else session.fitness.stitcher
    stitcher.apply(genome)
    return stitcher
