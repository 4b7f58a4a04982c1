"""Level-switch mutation (DarwinLM / EvoPress), generalised to unequal level costs.

One flip makes a random unit one level denser and another unit sparser by the number of levels
whose cost saving best matches the added cost, so attention<->MLP flips are cost-weighted. After
the flips, a genome outside the budget band is repaired by moving units other than the flipped ones.
"""

from __future__ import annotations

import random

from sparsearch.search.budget import Budget
from sparsearch.search.errors import SparsearchError
from sparsearch.search.space import Genome


def level_switch(genome: Genome, budget: Budget, rng: random.Random, *, max_flips: int = 3, tries: int = 20) -> Genome:
    """A mutated, feasible copy of ``genome`` with 1..``max_flips`` flips (the input if none is found)."""
    table = budget.model.table
    n = len(genome)
    for _ in range(tries):
        g = list(genome)
        touched: list[int] = []
        for _ in range(rng.randint(1, max_flips)):
            denser = [i for i in range(n) if g[i] > 0]
            if not denser:
                break
            i = rng.choice(denser)
            added = table[i][g[i] - 1] - table[i][g[i]]
            sparser = [j for j in range(n) if j != i and g[j] < len(table[j]) - 1]
            if not sparser:
                break
            j = rng.choice(sparser)
            steps = range(1, len(table[j]) - g[j])
            k = min(steps, key=lambda k: (abs((table[j][g[j]] - table[j][g[j] + k]) - added), k))
            g[i] -= 1
            g[j] += k
            touched += [i, j]
        if tuple(g) == tuple(genome):
            continue
        try:
            out = g if budget.feasible(tuple(g)) else budget.repair(g, rng, frozen=touched)
        except SparsearchError:
            continue
        if budget.feasible(out) and out != tuple(genome):
            return tuple(out)
    return tuple(genome)
