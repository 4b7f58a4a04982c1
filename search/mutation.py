"""Budget-exact level-switch mutation (DarwinLM / EvoPress), for units of unequal level costs.

A flip makes one random unit one level denser and another one level sparser (levels are ordered
by sparsity, so a flip is the smallest move between two units). After the flips the genome is
fitted to the budget: while over the limit a random untouched unit goes one level sparser, then
the slack is filled: while some untouched unit can go one level denser within the limit, a random
one does. Every mutant therefore spends the budget up to its last level step: moves that use the
slack are generated, and the cost does not drift down over generations.

The number of flips follows EvoPress: the smaller of two uniform draws on ``1..max_flips``
(mostly one flip, sometimes more), or a uniform draw (``flips="uniform"``).
"""

from __future__ import annotations

import random
from typing import Sequence

from sparsearch.search.budget import Budget
from sparsearch.search.space import Genome

FLIP_DISTRIBUTIONS = ("evopress", "uniform")


def flip_count(rng: random.Random, max_flips: int, distribution: str = "evopress") -> int:
    if distribution == "evopress":
        return min(rng.randint(1, max_flips), rng.randint(1, max_flips))
    return rng.randint(1, max_flips)


def fill_to_limit(genome: Sequence[int], budget: Budget, rng: random.Random, frozen: Sequence[int] = ()) -> Genome:
    """``genome`` moved to the budget's limit by single-level steps of units not in ``frozen``:
    sparser at random while over the limit, then denser at random while a step fits."""
    table = budget.model.table
    g = list(genome)
    frozen_set = set(frozen)
    movable = [i for i in range(len(g)) if i not in frozen_set]
    cost = budget.cost(tuple(g))
    while cost > budget.limit + 1e-9:
        cands = [i for i in movable if g[i] < len(table[i]) - 1] or [i for i in range(len(g)) if g[i] < len(table[i]) - 1]
        i = rng.choice(cands)
        cost += table[i][g[i] + 1] - table[i][g[i]]
        g[i] += 1
    while True:
        cands = [i for i in movable if g[i] > 0 and cost + table[i][g[i] - 1] - table[i][g[i]] <= budget.limit + 1e-9]
        if not cands:
            return tuple(g)
        i = rng.choice(cands)
        cost += table[i][g[i] - 1] - table[i][g[i]]
        g[i] -= 1


def level_switch(genome: Genome, budget: Budget, rng: random.Random, *, max_flips: int = 3,
                 flips: str = "evopress", tries: int = 20) -> Genome:
    """A mutated copy of ``genome`` in the budget band, filled to the limit (the input itself if
    ``tries`` attempts give nothing new)."""
    table = budget.model.table
    n = len(genome)
    for _ in range(tries):
        g = list(genome)
        touched: list[int] = []
        for _ in range(flip_count(rng, max_flips, flips)):
            denser = [i for i in range(n) if g[i] > 0]
            if not denser:
                break
            i = rng.choice(denser)
            sparser = [j for j in range(n) if j != i and g[j] < len(table[j]) - 1]
            if not sparser:
                break
            j = rng.choice(sparser)
            g[i] -= 1
            g[j] += 1
            touched += [i, j]
        out = fill_to_limit(g, budget, rng, frozen=touched)
        if out != tuple(genome) and budget.feasible(out):
            return out
    return tuple(genome)
