"""Search engines against the exact optimum of a separable problem. Prints one JSON object.

    python -m bench.search_synthetic [--seeds 5] [--first-seed 0] [--max-evaluations 3000] [--engines evolution,...]
                                     [--tpe-good-trials N] [--tpe-kernel-floor F]

The problem (noise-free, no torch): 30 layers = 60 units (attention and MLP), 9 levels each
(sparsity 0, 1/8, ..., 1), attention:MLP parameter cost 1:3, 50% of the parameters removed, a 1%
band. A unit's damage at sparsity s is ``w_u * s ** p_u`` (weights log-normal with sigma 0.3,
exponents in [1.5, 2.5], seeded: the uniform genome is about 1.4x the optimum), and a genome's
fitness is the sum over units: separable, so the multiple-choice knapsack on the exact damages is
the exact optimum (also checked by a dynamic program).

For each engine and seed: evaluations until the best feasible genome evaluated so far is within
5% and 1% of the optimum (``null``: not within --max-evaluations), and the final gap. Evolution
runs with a one-stage schedule and without fresh data (there is no noise to average out).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine
from sparsearch.search.knapsack import KnapsackAllocation, KnapsackConfig, KnapsackStart, solve
from sparsearch.search.nsga2 import NSGA2Config, NSGA2Engine
from sparsearch.search.space import Level, SearchSpace, Unit
from sparsearch.search.tpe import TPEConfig, TPEEngine
from sparsearch.search.tyr import TyrConfig, TyrEngine


class Problem:
    def __init__(self, seed: int = 0, layers: int = 30, levels: int = 9):
        rng = random.Random(seed)
        self.units = tuple(Unit(l, k) for l in range(layers) for k in ("attn", "mlp"))
        self.weight = {u: math.exp(rng.gauss(0, 0.3)) for u in self.units}
        self.power = {u: rng.uniform(1.5, 2.5) for u in self.units}
        self.dense = {u: 800 if u.kind == "attn" else 2400 for u in self.units}  # 100 / 300 per level
        self.levels = levels

    def space(self, ladders: dict | None = None) -> SearchSpace:
        rows = []
        for u in self.units:
            sparsities = ladders[u.name].sparsities if ladders else [i / (self.levels - 1) for i in range(self.levels)]
            rows.append(tuple(Level(s, round(self.dense[u] * (1 - s))) for s in sparsities))
        return SearchSpace(self.units, tuple(rows))

    def damage(self, u: Unit, s: float) -> float:
        return self.weight[u] * s ** self.power[u]


class CountingFitness:
    """The problem's fitness on ``space``; records the best feasible value after every evaluation."""

    def __init__(self, problem: Problem, space: SearchSpace, budget: Budget, trace: list, survivors=(1,)):
        self.problem, self.space, self.budget, self.trace = problem, space, budget, trace
        self.survivors = survivors

    def value(self, genome) -> float:
        return sum(self.problem.damage(u, lv[g].sparsity) for u, lv, g in zip(self.space.units, self.space.levels, genome))

    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        out = []
        for i, g in enumerate(genomes):
            v = self.value(g)
            best = self.trace[-1] if self.trace else math.inf
            self.trace.append(min(best, v) if self.budget.feasible(tuple(g)) else best)
            out.append(v)
            if on_result:
                on_result(i, v)
        return out


def dp_optimum(problem: Problem, space: SearchSpace, budget: Budget) -> float:
    """Exact optimum by dynamic programming over costs (multiples of 100)."""
    unit = 100  # every level cost is a multiple
    lo, hi = math.ceil((budget.limit - budget.tolerance) / unit - 1e-9), math.floor(budget.limit / unit + 1e-9)
    best = {0: 0.0}
    for u, lv in zip(space.units, space.levels):
        nxt = {}
        for c, v in best.items():
            for level in lv:
                k = c + level.params // unit
                if k <= hi:
                    w = v + problem.damage(u, level.sparsity)
                    if w < nxt.get(k, math.inf):
                        nxt[k] = w
        best = nxt
    return min(v for c, v in best.items() if lo <= c <= hi)


def first_within(trace: list[float], optimum: float, rel: float) -> int | None:
    for i, v in enumerate(trace):
        if v <= optimum * (1 + rel):
            return i + 1
    return None


def run(name: str, problem: Problem, seed: int, max_evals: int, run_dir: Path, tpe_good_trials: int = 0,
        tpe_kernel_floor: float = 0.0) -> dict:
    space = problem.space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.01)
    trace: list[float] = []
    fit = CountingFitness(problem, space, budget, trace)
    kw = dict(run_dir=str(run_dir), seed=seed, log=None)
    if name == "knapsack":
        engine = KnapsackAllocation(space, budget, fit, KnapsackConfig(), **kw)
    elif name.startswith("evolution"):
        start = {"knapsack": KnapsackStart()} if name.endswith("knapsack") else None
        cfg = EvolutionConfig(generations=max_evals // 16, offspring=16, fresh_data=False)
        engine = EvolutionEngine(space, budget, fit, cfg, starts=start, **kw)
    elif name.startswith("nsga2"):
        blocks = 5 if name.endswith("blocks") else 0
        gens = max_evals // 24 - 1 if not blocks else max_evals // (24 * blocks) - 1
        engine = NSGA2Engine(space, budget, fit, NSGA2Config(population=24, generations=gens, blocks=blocks), **kw)
    elif name in ("tpe", "tpe-repair"):  # budget mode shift (the default) or repair
        mode = "repair" if name == "tpe-repair" else "shift"
        cfg = TPEConfig(trials=max_evals, startup_trials=20, budget_mode=mode, good_trials=tpe_good_trials,
                        kernel_floor=tpe_kernel_floor if mode == "shift" else 0.0)
        engine = TPEEngine(space, budget, fit, cfg, **kw)
    elif name == "tyr":
        def rebuild(round_index, ladders):
            sp = problem.space(ladders)
            return sp, CountingFitness(problem, sp, Budget.from_sparsity(CostModel.params(sp), 0.5, 0.01), trace)

        cfg = TyrConfig(rounds=4, generations=max_evals // (4 * 16), offspring=16, fresh_data=False)
        engine = TyrEngine(space, budget, fit, cfg, rebuild=rebuild,
                           make_budget=lambda sp: Budget.from_sparsity(CostModel.params(sp), 0.5, 0.01), **kw)
    else:
        raise SystemExit(f"unknown engine {name}")
    t0 = time.perf_counter()
    result = engine.run()
    return {"trace": trace, "result": fit.value(result.best_genome) if name != "tyr" else trace[-1],
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-evaluations", type=int, default=3000)
    p.add_argument("--engines", default="knapsack,evolution,evolution+knapsack,tyr,nsga2,nsga2-blocks,tpe")
    p.add_argument("--problem-seed", type=int, default=0)
    p.add_argument("--tpe-good-trials", type=int, default=0, help="TPE's good-set cap (0: the engine's default)")
    p.add_argument("--tpe-kernel-floor", type=float, default=0.0,
                   help="TPE's narrowest kernel in level steps (0: the engine's default)")
    p.add_argument("--first-seed", type=int, default=0)
    args = p.parse_args()
    problem = Problem(args.problem_seed)
    space = problem.space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.01)
    damage = [[problem.damage(u, l.sparsity) for l in lv] for u, lv in zip(space.units, space.levels)]
    exact = solve(space, budget, damage)
    optimum = sum(d[g] for d, g in zip(damage, exact))
    dp = dp_optimum(problem, space, budget)
    uniform = sum(d[g] for d, g in zip(damage, budget.repair(space.uniform(0.5), random.Random(0))))
    tpe = TPEConfig(good_trials=args.tpe_good_trials, kernel_floor=args.tpe_kernel_floor)
    out = {"tpe_good_trials": tpe.good_set_cap, "tpe_kernel_floor": tpe.kernel_floor_steps,
           "problem": {"units": len(space.units), "levels": 9, "cost_attn_mlp": "1:3", "target_sparsity": 0.5,
                       "band": 0.01, "optimum": round(optimum, 4), "optimum_dp": round(dp, 4),
                       "uniform": round(uniform, 4)},
           "max_evaluations": args.max_evaluations, "seeds": args.seeds, "engines": {}}
    for name in args.engines.split(","):
        rows = []
        for seed in range(args.first_seed, args.first_seed + (args.seeds if name != "knapsack" else 1)):
            with tempfile.TemporaryDirectory() as d:
                r = run(name, problem, seed, args.max_evaluations, Path(d), args.tpe_good_trials, args.tpe_kernel_floor)
            rows.append({"to_5pct": first_within(r["trace"], optimum, 0.05), "to_1pct": first_within(r["trace"], optimum, 0.01),
                         "evaluations": len(r["trace"]), "final_gap": round(r["result"] / optimum - 1, 4),
                         "wall_s": round(r["wall_s"], 1)})
        reached = [r["to_5pct"] for r in rows if r["to_5pct"] is not None]
        out["engines"][name] = {"runs": rows, "median_to_5pct": statistics.median(reached) if len(reached) == len(rows) else None}
        print(f"{name}: {[r['to_5pct'] for r in rows]} to 5%, {[r['to_1pct'] for r in rows]} to 1%", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
