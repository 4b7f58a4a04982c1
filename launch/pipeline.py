"""The steps of a run, as plain functions over typed configs: supernet, fitness tokens, search."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from sparsearch.fitness.data import CalibrationConfig, calibration_tokens
from sparsearch.fitness.evaluator import Evaluator
from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.launch.config import BASELINES, SearchConfig
from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.checkpoint import atomic_write
from sparsearch.search.engine import Result
from sparsearch.search.errors import SparsearchError
from sparsearch.search.space import Genome, SearchSpace
from sparsearch.supernet.build import build_supernet
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.store import SupernetStore

Log = Callable[[str], None]


def ensure_supernet(
    model, tokenizer, out: Path, cfg: SupernetConfig, calib: CalibrationConfig, *, model_name: str,
    progress: bool, log: Log,
) -> SupernetStore:
    """Open the finished supernet at ``out``, or build (resume) it there."""
    if SupernetStore.is_complete(out):
        return SupernetStore.open(out)
    partial = SupernetStore.partial(out)
    tokens = partial.calibration() if partial is not None else None
    if tokens is not None and tokens.shape == (calib.samples, calib.seqlen):
        log(f"resuming the supernet build in {out}")
    else:
        log(f"calibration: {calib.samples} x {calib.seqlen} tokens from {calib.source}"
            + (f" ({calib.location})" if calib.location else ""))
        tokens = calibration_tokens(calib, model, tokenizer, progress=progress)
    return build_supernet(model, tokens, str(out), cfg, model_name=model_name, calibration=calib.describe(),
                          progress=progress)


def fitness_tokens(calib: CalibrationConfig, schedule: TokenSchedule, model, tokenizer, run_dir: Path) -> torch.Tensor:
    """Fitness tokens: the calibration source again with another seed (never held-out text), as many
    sequences as the schedule's last stage needs; kept in the run directory for resumes."""
    path = run_dir / "fitness_tokens.safetensors"
    rows = math.ceil(schedule.max_tokens / calib.seqlen)
    if path.is_file():
        tokens = load_file(str(path))["tokens"]
        if tokens.shape == (rows, calib.seqlen):
            return tokens
    tokens = calibration_tokens(dataclasses.replace(calib, samples=rows, seed=calib.seed + 1), model, tokenizer)
    atomic_write(path, st_save({"tokens": tokens.contiguous()}))
    return tokens


def make_budget(space: SearchSpace, cfg: SearchConfig, head_dim: int, context: int) -> Budget:
    model = CostModel.params(space) if cfg.cost == "params" else CostModel.flops(space, head_dim=head_dim, context=context)
    return Budget.from_sparsity(model, cfg.target_sparsity, cfg.tolerance)


def baseline_calibration(store: SupernetStore, calib: CalibrationConfig, samples: int, model, tokenizer) -> torch.Tensor:
    """Tokens that OWL/FLAP score activations on: the supernet's own calibration tokens when it
    keeps them, else ``samples`` sequences drawn from the run's calibration source."""
    tokens = store.calibration()
    if tokens is None:
        return calibration_tokens(dataclasses.replace(calib, samples=samples), model, tokenizer)
    return tokens[:samples]


def baseline_genomes(
    names: tuple[str, ...], model, space: SearchSpace, budget: Budget, target: float, tokens: torch.Tensor | None,
    *, seed: int, batch_size: int,
) -> dict[str, Genome]:
    """One-shot allocations (no fitness evaluated) on ``space`` under ``budget``; ``model`` must be
    dense. OWL and FLAP share one calibration pass over ``tokens``."""
    import random

    from sparsearch.supernet.capture import input_moments
    from sparsearch.supernet.flap import flap_genome
    from sparsearch.supernet.owl import owl_genome

    moments = input_moments(model, tokens, batch_size) if set(names) - {"uniform"} else None
    out = {}
    for name in names:
        rng = random.Random(seed)
        if name == "uniform":
            out[name] = budget.repair(space.uniform(target), rng)
        elif name == "owl":
            out[name] = owl_genome(model, space, budget, moments, target, rng)[0]
        elif name == "flap":
            out[name] = flap_genome(model, space, budget, moments, rng)[0]
        else:
            raise SparsearchError(f"unknown baseline {name!r}")
    return out


def search(
    model, tokenizer, store: SupernetStore, cfg: SearchConfig, *, calib: CalibrationConfig,
    supernet_cfg: SupernetConfig, run_dir: Path, resume: bool, log: Log, progress: bool,
    model_spec: str | None = None, workers: int = 1, ray_address: str | None = None,
) -> dict[str, Any]:
    """Search the budget allocation; returns what the summary needs (best genome, its space, ...).

    With ``workers > 1`` or a ``ray_address``, fitness runs on a Ray actor pool (each actor loads
    ``model_spec`` itself); otherwise in this process on ``model``. Afterwards ``model`` is the
    stitched best candidate.
    """
    from sparsearch.search.evolution import EvolutionEngine
    from sparsearch.search.nsga2 import NSGA2Engine
    from sparsearch.search.tpe import TPEEngine
    from sparsearch.search.tyr import TyrEngine
    from sparsearch.supernet.stitch import Stitcher

    started = time.perf_counter()
    schedule = cfg.token_schedule
    tokens = fitness_tokens(calib, schedule, model, tokenizer, run_dir)
    distributed = workers > 1 or ray_address is not None
    teacher = {}

    def fitness_for(st: SupernetStore):
        if distributed:
            from sparsearch.fitness.pool import EvaluatorSpec, RayPool
            from sparsearch.launch.cluster import connect

            connect(ray_address, num_cpus=max(workers, 1))
            import torch

            spec = EvaluatorSpec(model=model_spec or store.manifest["model"]["name"], supernet=str(st.path),
                                 tokens=str(run_dir / "fitness_tokens.safetensors"),
                                 schedule=tuple((s.survivors, s.tokens, s.train_tokens) for s in schedule.stages),
                                 topk=cfg.topk, batch_size=cfg.eval_batch_size, seed=cfg.seed, threads=1)
            gpus = 1 if torch.cuda.is_available() else 0
            return RayPool(spec, max(workers, 1), num_gpus=gpus, num_cpus=0 if gpus else 1)
        ev = Evaluator(model, st, tokens, schedule, topk=cfg.topk, batch_size=cfg.eval_batch_size,
                       teacher=teacher.get("cache"))
        teacher["cache"] = ev.teacher
        return ev

    def restore_dense(fit) -> None:
        if not distributed:
            fit.stitcher.apply(fit.space.dense)

    space = store.space()
    shape = store.manifest["model"]["shape"]
    budget_of = lambda sp: make_budget(sp, cfg, shape["head_dim"], calib.seqlen)  # noqa: E731
    budget = budget_of(space)
    final = len(schedule) - 1
    wanted = (cfg.engine,) if cfg.engine in BASELINES else {"uniform": (), "best": BASELINES}.get(cfg.init, (cfg.init,))
    baseline_tokens = None
    if set(wanted) - {"uniform"}:
        log(f"baselines: scoring {', '.join(n for n in wanted if n != 'uniform')} on {cfg.baseline_samples} "
            "calibration sequences")
        baseline_tokens = baseline_calibration(store, calib, cfg.baseline_samples, model, tokenizer)
    starts = baseline_genomes(tuple(wanted), model, space, budget, cfg.target_sparsity, baseline_tokens,
                              seed=cfg.seed, batch_size=cfg.eval_batch_size)
    state = {"store": store, "fitness": fitness_for(store)}
    baselines: dict[str, dict[str, Any]] = {}
    try:
        if starts:
            names = list(starts)
            scores = state["fitness"].evaluate_many([starts[n] for n in names], final)
            baselines = {n: {"genome": list(starts[n]), "kl": sc, "sparsity": space.sparsity(starts[n])}
                         for n, sc in zip(names, scores)}
            for n in names:
                log(f"baseline {n}: sparsity {baselines[n]['sparsity']:.4f}, KL {baselines[n]['kl']:.5f}")
        if cfg.engine in BASELINES:
            result = Result(starts[cfg.engine], baselines[cfg.engine]["kl"], 1, round(time.perf_counter() - started, 3))
        else:
            start = min(starts, key=lambda n: baselines[n]["kl"]) if starts else None
            if start is not None:
                log(f"{cfg.engine}: starting from the {start} allocation")
            classes = {"evolution": EvolutionEngine, "nsga2": NSGA2Engine, "tpe": TPEEngine, "tyr": TyrEngine}
            extra: dict[str, Any] = {}
            if cfg.engine == "tyr":
                calib_tokens = store.calibration()
                if calib_tokens is None:
                    raise SparsearchError(f"supernet at {store.path} keeps no calibration tokens; rebuild it for tyr")

                def rebuild(round_index: int, ladders):
                    restore_dense(state["fitness"])  # prune the dense model again
                    out = run_dir / "tyr" / f"round{round_index}"
                    log(f"tyr round {round_index}: supernet with ladder step "
                        f"{cfg.engine_config().step(round_index)} in {out}")
                    st = SupernetStore.open(out) if SupernetStore.is_complete(out) else build_supernet(
                        model, calib_tokens, str(out), dataclasses.replace(supernet_cfg, unit_ladders=ladders),
                        model_name=store.manifest["model"]["name"], calibration=store.manifest["calibration"],
                        progress=progress)
                    if distributed:
                        state["fitness"].close()
                    state.update(store=st, fitness=fitness_for(st))
                    return st.space(), state["fitness"]

                extra = {"rebuild": rebuild, "make_budget": budget_of}
            engine = classes[cfg.engine](space, budget, state["fitness"], cfg.engine_config(), run_dir=str(run_dir),
                                         seed=cfg.seed, log=log, start=starts.get(start), **extra)
            result = engine.run(resume=resume)
            result = dataclasses.replace(result, evaluations=result.evaluations + len(starts))
            space, budget = engine.space, engine.budget
        same_supernet = state["store"] is store  # tyr rounds move on to rebuilt supernets
        store, fit = state["store"], state["fitness"]
        uniform = space.uniform(cfg.target_sparsity)
        scored = baselines.get("uniform")
        if same_supernet and scored is not None and tuple(scored["genome"]) == uniform:
            uniform_score = scored["kl"]  # scored as a baseline already, on the same supernet
        else:
            uniform_score = fit.evaluate_many([uniform], final)[0]
        workers_nodes = sorted(set(fit.nodes)) if distributed else []
    finally:
        if distributed:
            state["fitness"].close()
    stitcher = Stitcher(model, store) if distributed else fit.stitcher
    stitcher.apply(result.best_genome)
    return {
        "result": result, "space": space, "budget": budget, "store": store, "uniform_genome": uniform,
        "uniform_fitness": uniform_score, "params_total": sum(p.numel() for p in model.parameters()),
        "schedule": [dataclasses.asdict(s) for s in schedule.stages], "nodes": workers_nodes,
        "baselines": baselines, "stitcher": stitcher,
    }
