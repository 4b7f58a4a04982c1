"""Search spaces, budgets and engines over per-unit sparsity levels (no torch here)."""

from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Genome, Ladder, Level, SearchSpace, Unit

__all__ = ["Genome", "Ladder", "Level", "SearchSpace", "SparsearchError", "Unit"]
