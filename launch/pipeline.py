"""The steps of a run, as plain functions over typed configs: supernet, fitness tokens, budget,
starts, search; :func:`search` runs them in order and returns a :class:`SearchOutcome`."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sparsearch.fitness.config import FitnessConfig, TrainConfig
from sparsearch.fitness.data import CalibrationConfig
from sparsearch.launch import tokens as run_tokens
from sparsearch.launch.cluster import ClusterConfig
from sparsearch.launch.config import SearchConfig
from sparsearch.launch.evaluators import FitnessFactory
from sparsearch.launch.phases import PhaseClock, TimedFitness
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


def starts(model, tokenizer, store: SupernetStore, space: SearchSpace, budget: Budget, cfg: SearchConfig,
           calib: CalibrationConfig, *, batch_size: int, progress: bool, log: Log,
           clock: PhaseClock) -> dict[str, Genome | StartProvider]:
    """The run's starts (``cfg.start_names``), each computed by its registered
    :class:`~sparsearch.search.starts.Start` on ``space`` under ``budget`` (``model`` must be dense;
    clock phase ``baselines``). Starts that read activations share one pass over
    ``cfg.baseline_samples`` calibration sequences; a start computed from probes (the knapsack)
    is a provider that the engine calls with the run's fitness, its calls counted as ``probes``."""
    names = cfg.start_names
    reading = [n for n in names if STARTS[n].activations]
    tokens = None
    if reading:
        log(f"baselines: scoring {', '.join(reading)} on {cfg.baseline_samples} calibration sequences")
        tokens = run_tokens.baseline_tokens(store.calibration(), calib, cfg.baseline_samples, model, tokenizer)
    ctx = StartContext(space, budget, cfg.target_sparsity, seed=cfg.seed, progress=progress, log=log, model=model,
                       activations=functools.cache(lambda: input_moments(model, tokens, batch_size)))
    with clock("baselines"):
        out = {name: STARTS[name].genome(ctx, cfg.start_config(name)) for name in names}
    return {name: clock.timed(g, "probes") if callable(g) else g for name, g in out.items()}


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
    run_dir: Path, resume: bool, log: Log, progress: bool,
    model_spec: str | None = None, cluster: ClusterConfig = ClusterConfig(), trust_remote_code: bool = False,
    train: TrainConfig = TrainConfig(), clock: PhaseClock | None = None,
) -> SearchOutcome:
    """Search the budget allocation of ``store`` for ``model`` (dense on entry; stitched to the
    best genome on return). Fitness runs in process, or on Ray actors (``cluster``), each of
    which loads ``model_spec`` itself. ``train``: how training-aware stages train a candidate.
    ``clock`` gets the phases ``sampling`` (the run's tokens), ``teacher``, ``probes``, ``search``
    and ``selection``."""
    clock = clock or PhaseClock()
    space = store.space()
    budget_of = functools.partial(make_budget, cfg=cfg, head_dim=store.manifest["model"]["shape"]["head_dim"],
                                  context=calib.seqlen)
    budget = budget_of(space)
    budget.require_feasible()  # before anything is written or scored
    plan = run_tokens.TokenPlan.of(calib, fitness)
    with clock("sampling"):
        drawn = {split: run_tokens.run_tokens(run_dir, calib, plan, split, model, tokenizer, resume=resume,
                                              progress=progress) for split in run_tokens.FILES}
    factory = FitnessFactory(model, model_spec=model_spec or store.manifest["model"]["name"], run_dir=run_dir,
                             tokens=drawn["fitness"], fitness=fitness, cluster=cluster, seed=cfg.seed,
                             trust_remote_code=trust_remote_code, train=train, train_tokens=drawn["training"],
                             validation_tokens=drawn["validation"])
    begun = starts(model, tokenizer, store, space, budget, cfg, calib, batch_size=fitness.batch_size,
                   progress=progress, log=log, clock=clock)
    with clock("teacher"):
        session = Session(model, store, factory.open(store), factory, run_dir, budget_of, progress=progress, log=log)
    try:
        engine = make_engine(cfg.engine, space, budget, TimedFitness(session.fitness, clock), cfg.engine_config,
                             session=session, run_dir=str(run_dir), seed=cfg.seed, log=log, starts=begun,
                             patience=cfg.patience)
        with clock("search"):
            result = engine.run(resume=resume, settings=run_settings(
                cfg, fitness, store, drawn["fitness"], train, drawn["training"], drawn["validation"]))
        found = _found(engine, result, session, space, cfg, fitness)
    finally:
        if factory.distributed:
            session.fitness.close()
    stitcher = _stitched(session, result.best_genome)
    return SearchOutcome(**found, stitcher=stitcher, params_total=sum(p.numel() for p in model.parameters()),
                         validation_tokens=0 if drawn["validation"] is None else drawn["validation"].numel())


def _found(engine: Engine, result: Result, session: Session, first_space: SearchSpace, cfg: SearchConfig,
           fitness: FitnessConfig) -> dict[str, Any]:
    """What the run found, on the supernet and fitness it ended on: the :class:`SearchOutcome`
    fields but the stitched model's."""
    space, schedule = engine.space, fitness.token_schedule
    baselines = {n: {"genome": list(g), "kl": result.start_scores[n], "sparsity": space.sparsity(g)}
                 for n, g in engine.starts.items()}
    uniform = space.uniform(cfg.target_sparsity)
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
