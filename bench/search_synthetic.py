"""Search engines against the exact optimum of a synthetic problem. Prints one JSON object.

    python -m bench.search_synthetic [--seeds 5] [--first-seed 0] [--max-evaluations 3000] [--engines evolution,...]
                                     [--tpe-good-trials N] [--tpe-kernel-floor F] [--problem separable|hard]
                                     [--noise 0.01]

The problem (noise-free, no torch): 30 layers = 60 units (attention and MLP), 9 levels each
(sparsity 0, 1/8, ..., 1), attention:MLP parameter cost 1:3, 50% of the parameters removed, a 1%
band. A unit's damage at sparsity s is ``w_u * s ** p_u`` (weights log-normal with sigma 0.3,
exponents in [1.5, 2.5], seeded: the uniform genome is about 1.4x the optimum), and a genome's
fitness is the sum over units: separable, so the multiple-choice knapsack on the exact damages is
the exact optimum (also checked by a dynamic program).

``--problem hard`` (:class:`HardProblem`): 40 layers = 80 units, attention with 9 levels and MLP
with 17, and damage that compounds between neighbouring layers: on top of each unit's own damage,
two adjacent MLPs both pruned past 50% cost ``J_l * 4 (s_l - 1/2)(s_{l+1} - 1/2)`` more, so the
problem is not separable and a knapsack on one-unit damages misjudges it; its exact optimum comes
from a dynamic program over (cost, the previous MLP's level). ``--noise`` multiplies every score
by ``1 + noise * z`` with ``z`` a standard normal fixed by the genome and the data sample, as a
fitness on a finite batch is: the same genome on the same batch scores the same, on another batch
differently. Evolution then runs with fresh data (its default); regret is measured on the
noise-free value.

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


    def value(self, space: SearchSpace, genome) -> float:
        return sum(self.damage(u, lv[g].sparsity) for u, lv, g in zip(space.units, space.levels, genome))

    def optimum(self, space: SearchSpace, budget: Budget) -> float:
        return dp_optimum(self, space, budget)


class HardProblem(Problem):
    """Non-separable: neighbouring MLPs both pruned past half compound their damage (module docstring)."""

    def __init__(self, seed: int = 0, layers: int = 40):
        super().__init__(seed, layers)
        rng = random.Random(seed + 10_000)
        self.joint = [2.0 * math.exp(rng.gauss(0, 0.3)) for _ in range(layers - 1)]
        self.layers = layers

    def space(self, ladders: dict | None = None) -> SearchSpace:
        rows = []
        for u in self.units:
            n = 9 if u.kind == "attn" else 17
            sparsities = ladders[u.name].sparsities if ladders else [i / (n - 1) for i in range(n)]
            rows.append(tuple(Level(s, round(self.dense[u] * (1 - s))) for s in sparsities))
        return SearchSpace(self.units, tuple(rows))

    def pair(self, l: int, a: float, b: float) -> float:
        return self.joint[l] * 4 * max(0.0, a - 0.5) * max(0.0, b - 0.5)

    def value(self, space: SearchSpace, genome) -> float:
        s = [lv[g].sparsity for lv, g in zip(space.levels, genome)]
        own = sum(self.damage(u, x) for u, x in zip(space.units, s))
        mlp = s[1::2]
        return own + sum(self.pair(l, mlp[l], mlp[l + 1]) for l in range(self.layers - 1))

    def optimum(self, space: SearchSpace, budget: Budget) -> float:
        """Exact, by a dynamic program over (cost in steps of 50 parameters, the previous MLP's level)."""
        import numpy as np

        step = 50
        lo = math.ceil((budget.limit - budget.tolerance) / step - 1e-9)
        hi = math.floor(budget.limit / step + 1e-9)
        attn, mlp = space.levels[0::2], space.levels[1::2]
        best = None  # best[m, c]: least damage of the layers so far, the last MLP at level m, cost c
        for l in range(self.layers):
            a_lv, m_lv = attn[l], mlp[l]
            ua, um = self.units[2 * l], self.units[2 * l + 1]
            cur = np.full((len(m_lv), hi + 1), np.inf)
            for j, m in enumerate(m_lv):
                # this layer alone, at MLP level j: the best attention level for each cost
                layer = np.full(hi + 1, np.inf)
                for a in a_lv:
                    c = (a.params + m.params) // step
                    if c <= hi:
                        layer[c] = min(layer[c], self.damage(ua, a.sparsity) + self.damage(um, m.sparsity))
                if best is None:
                    cur[j] = layer
                    continue
                for i, prev in enumerate(mlp[l - 1]):
                    joint = self.pair(l - 1, prev.sparsity, m.sparsity)
                    for c in np.nonzero(np.isfinite(layer))[0]:
                        shifted = best[i, : hi + 1 - c] + layer[c] + joint
                        np.minimum(cur[j, c:], shifted, out=cur[j, c:])
            best = cur
        return float(best[:, lo : hi + 1].min())


class CountingFitness:
    """The problem's fitness on ``space`` (noisy with ``noise``); records the best feasible
    noise-free value after every evaluation."""

    def __init__(self, problem: Problem, space: SearchSpace, budget: Budget, trace: list, survivors=(1,),
                 noise: float = 0.0):
        self.problem, self.space, self.budget, self.trace = problem, space, budget, trace
        self.survivors, self.noise = survivors, noise

    def value(self, genome) -> float:
        return self.problem.value(self.space, genome)

    def scored(self, genome, sample: int) -> float:
        v = self.value(genome)
        if not self.noise:
            return v
        z = random.Random(hash((tuple(genome), sample))).gauss(0, 1)
        return v * (1 + self.noise * z)

    def evaluate_many(self, genomes, stage, on_result=None, sample=0):
        out = []
        for i, g in enumerate(genomes):
            v = self.value(g)
            best = self.trace[-1] if self.trace else math.inf
            self.trace.append(min(best, v) if self.budget.feasible(tuple(g)) else best)
            v = self.scored(g, sample)
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
        tpe_kernel_floor: float = 0.0, noise: float = 0.0) -> dict:
    space = problem.space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.01)
    trace: list[float] = []
    fit = CountingFitness(problem, space, budget, trace, noise=noise)
    kw = dict(run_dir=str(run_dir), seed=seed, log=None)
    rounds = 3 if name.endswith("knapsack-rounds") else 0  # re-probed around the allocation, solved again
    if name in ("knapsack", "knapsack-rounds"):
        engine = KnapsackAllocation(space, budget, fit, KnapsackConfig(knapsack_rounds=rounds), **kw)
    elif name.startswith("evolution"):
        start = {"knapsack": KnapsackStart(rounds=rounds)} if "+knapsack" in name else None
        cfg = EvolutionConfig(generations=max_evals // (16 + bool(noise)), offspring=16, fresh_data=bool(noise))
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
            return sp, CountingFitness(problem, sp, Budget.from_sparsity(CostModel.params(sp), 0.5, 0.01), trace,
                                       noise=noise)

        cfg = TyrConfig(rounds=4, generations=max_evals // (4 * (17 if noise else 16)), offspring=16,
                        fresh_data=bool(noise))
        engine = TyrEngine(space, budget, fit, cfg, rebuild=rebuild,
                           make_budget=lambda sp: Budget.from_sparsity(CostModel.params(sp), 0.5, 0.01), **kw)
    else:
        raise SystemExit(f"unknown engine {name}")
    t0 = time.perf_counter()
    result = engine.run()
    return {"trace": trace, "result": fit.value(result.best_genome) if name != "tyr" else trace[-1],
            "picked_vs_best_seen": (fit.value(result.best_genome) / trace[-1] - 1) if name != "tyr" else None,
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
    p.add_argument("--problem", choices=("separable", "hard"), default="separable")
    p.add_argument("--noise", type=float, default=0.0, help="relative noise of every score (0.01: 1%%)")
    args = p.parse_args()
    problem = (HardProblem if args.problem == "hard" else Problem)(args.problem_seed)
    space = problem.space()
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.01)
    damage = [[problem.damage(u, l.sparsity) for l in lv] for u, lv in zip(space.units, space.levels)]
    separable = solve(space, budget, damage)  # the knapsack on the exact one-unit damages
    dp = problem.optimum(space, budget)
    optimum = dp if args.problem == "hard" else problem.value(space, separable)
    uniform = problem.value(space, budget.repair(space.uniform(0.5), random.Random(0)))
    tpe = TPEConfig(good_trials=args.tpe_good_trials, kernel_floor=args.tpe_kernel_floor)
    out = {"tpe_good_trials": tpe.good_set_cap, "tpe_kernel_floor": tpe.kernel_floor_steps,
           "problem": {"kind": args.problem, "units": len(space.units), "levels": sorted({len(lv) for lv in space.levels}),
                       "cost_attn_mlp": "1:3", "target_sparsity": 0.5, "band": 0.01, "noise": args.noise,
                       "optimum": round(optimum, 4), "optimum_dp": round(dp, 4), "uniform": round(uniform, 4),
                       "knapsack_on_exact_unit_damages": round(problem.value(space, separable), 4)},
           "max_evaluations": args.max_evaluations, "seeds": args.seeds, "engines": {}}
    for name in args.engines.split(","):
        rows = []
        deterministic = name.startswith("knapsack") and not args.noise  # one run is every run
        for seed in range(args.first_seed, args.first_seed + (1 if deterministic else args.seeds)):
            with tempfile.TemporaryDirectory() as d:
                r = run(name, problem, seed, args.max_evaluations, Path(d), args.tpe_good_trials,
                        args.tpe_kernel_floor, args.noise)
            rows.append({"to_5pct": first_within(r["trace"], optimum, 0.05), "to_1pct": first_within(r["trace"], optimum, 0.01),
                         "evaluations": len(r["trace"]), "final_gap": round(r["result"] / optimum - 1, 4),
                         "picked_vs_best_seen": None if r["picked_vs_best_seen"] is None
                         else round(r["picked_vs_best_seen"], 4), "wall_s": round(r["wall_s"], 1)})
        reached = [r["to_5pct"] for r in rows if r["to_5pct"] is not None]
        out["engines"][name] = {"runs": rows, "median_to_5pct": statistics.median(reached) if len(reached) == len(rows) else None,
                                "median_final_gap": statistics.median(r["final_gap"] for r in rows)}
        print(f"{name}: {[r['to_5pct'] for r in rows]} to 5%, {[r['to_1pct'] for r in rows]} to 1%", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
