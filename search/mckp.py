"""The multiple-choice knapsack: one option per group, exactly, as a mixed-integer program.

Used by the knapsack allocation (:mod:`sparsearch.search.knapsack`), NSGA-II's block join and
the budget's feasibility check (:meth:`sparsearch.search.budget.Budget.require_feasible`).
"""

from __future__ import annotations

import numpy as np


def choose(values: list[list[float]], costs: list[list[float]], low: float, high: float) -> list[int] | None:
    """The multiple-choice knapsack: one option per group, the sum of ``values`` minimal, the sum
    of ``costs`` within ``[low, high]`` (exact, ``scipy.optimize.milp``); ``None`` if infeasible.
    An option of infinite value is never chosen."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    sizes = [len(v) for v in values]
    n = sum(sizes)
    objective = np.concatenate([np.asarray(v, dtype=float) for v in values])
    allowed = np.isfinite(objective)
    objective = np.where(allowed, objective, 0.0)
    cost = np.concatenate([np.asarray(c, dtype=float) for c in costs])
    one_each = np.zeros((len(sizes), n))
    start = 0
    for g, size in enumerate(sizes):
        one_each[g, start : start + size] = 1.0
        start += size
    scale = max(float(np.abs(cost).max()), 1.0)  # costs of order 1 for the solver's tolerances
    res = milp(objective, integrality=np.ones(n), bounds=Bounds(0, allowed.astype(float)),
               constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(cost / scale, low / scale, high / scale)],
               options={"mip_rel_gap": 0.0})
    if res.x is None:
        return None
    x, picks, start = res.x.round(), [], 0
    for size in sizes:
        picks.append(int(np.argmax(x[start : start + size])))
        start += size
    return picks
